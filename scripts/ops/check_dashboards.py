"""Checks Grafana dashboards: each JSON file loads as a dashboard in grafana-foundation-sdk, every
panel has a datasource and targets, and every query parses as PromQL once Grafana's variables are
substituted. Usage: check_dashboards.py DIR"""

import json
import pathlib
import re
import sys

import promql_parser
from grafana_foundation_sdk.models.dashboard import Dashboard

SUBSTITUTIONS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def substitute(expr: str) -> str:
    for name, value in SUBSTITUTIONS.items():
        expr = expr.replace(name, value)
    # Template variables become a plain label value ("x"); `=~"$var"` stays a valid regex.
    return re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", "x", expr)


def main(directory: str) -> int:
    failures = 0
    files = sorted(pathlib.Path(directory).glob("*.json"))
    if not files:
        print(f"no dashboards in {directory}")
        return 1
    for path in files:
        data = json.loads(path.read_text())
        Dashboard.from_json(data)
        uid = data.get("uid")
        if not uid or not data.get("title"):
            print(f"{path.name}: a dashboard needs a uid and a title")
            failures += 1
        queries = 0
        for panel in data.get("panels", []):
            targets = panel.get("targets") or []
            if not targets or not panel.get("datasource"):
                print(f"{path.name}: panel {panel.get('title')!r} has no datasource or targets")
                failures += 1
            for target in targets:
                expr = target.get("expr", "")
                try:
                    promql_parser.parse(substitute(expr))
                    queries += 1
                except Exception as error:  # noqa: BLE001 - the parser's errors are ValueError-like
                    print(f"{path.name}: panel {panel.get('title')!r}: {error}\n  {expr}")
                    failures += 1
        print(f"{path.name}: {len(data.get('panels', []))} panels, {queries} queries parse")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
