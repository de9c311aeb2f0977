"""Checks the Fluent Bit configs of deploy/logging (no Fluent Bit build can be had here).

Usage: check_fluentbit.py DAEMONSET.yaml CONSUMER.yaml MOA_LOG_LINE.json

1. Each file parses as Fluent Bit's YAML config: sections and keys it knows, plugins by their real
   names with the settings each needs, `match` patterns that reach an input's tag, parsers that
   exist and regexes that compile.
2. A real moa log line (captured from `moa up` by validate-ops.sh) goes through the pipeline as the
   plugins would treat it: wrapped in a CRI line, split by the `cri` parser, lifted by the JSON
   parser (its time format must read moa's timestamp), given Kubernetes metadata, produced with its
   Kafka key field, then lifted from the Kafka record. Every Loki label and label key must resolve to
   a field of that record, and none may be a high-cardinality id.
"""

import datetime
import fnmatch
import json
import re
import sys

import yaml

SECTIONS = {"service", "parsers", "pipeline", "multiline_parsers", "env", "includes"}
PLUGINS = {
    "inputs": {"tail": ["path"], "kafka": ["brokers", "topics"]},
    "filters": {
        "multiline": ["multiline.key_content", "multiline.parser"],
        "kubernetes": [],
        "parser": ["key_name", "parser"],
        "nest": ["operation"],
        "modify": [],
        "grep": [],
    },
    "outputs": {"kafka": ["brokers", "topics"], "loki": ["host"]},
}
BUILTIN_MULTILINE = {"cri", "docker", "go", "python", "java", "ruby"}
HIGH_CARDINALITY = {"request_id", "trace_id", "span_id", "message", "duration_ms", "path"}


class Failure(Exception):
    pass


def check(condition, message):
    if not condition:
        raise Failure(message)


def load(path):
    with open(path) as handle:
        config = yaml.safe_load(handle)
    check(isinstance(config, dict), f"{path}: not a YAML mapping")
    unknown = set(config) - SECTIONS
    check(not unknown, f"{path}: unknown sections {sorted(unknown)}")
    check("pipeline" in config, f"{path}: no pipeline")
    parsers = {p["name"]: p for p in config.get("parsers", [])}
    for name, parser in parsers.items():
        check(parser.get("format") in {"regex", "json", "logfmt", "ltsv"}, f"{path}: parser {name}: format")
        if parser["format"] == "regex":
            re.compile(ruby_regex(parser["regex"]))
    tags = []
    for kind in ("inputs", "filters", "outputs"):
        for plugin in config["pipeline"].get(kind, []):
            name = plugin.get("name")
            check(name in PLUGINS[kind], f"{path}: {kind}: unknown plugin {name!r}")
            for key in PLUGINS[kind][name]:
                check(key in plugin, f"{path}: {kind} {name}: missing {key}")
            if kind == "inputs":
                check("tag" in plugin, f"{path}: input {name}: no tag")
                tags.append(plugin["tag"])
                if "parser" in plugin:
                    check(plugin["parser"] in parsers, f"{path}: input {name}: no parser {plugin['parser']}")
            else:
                pattern = plugin.get("match")
                check(pattern, f"{path}: {kind} {name}: no match")
                check(
                    any(fnmatch.fnmatch(tag.replace("*", "x"), pattern) for tag in tags),
                    f"{path}: {kind} {name}: match {pattern!r} reaches no input tag {tags}",
                )
            if kind == "filters" and name == "parser":
                check(plugin["parser"] in parsers, f"{path}: parser filter: no parser {plugin['parser']}")
            if kind == "filters" and name == "multiline":
                check(plugin["multiline.parser"] in BUILTIN_MULTILINE, f"{path}: multiline parser")
    return config, parsers


def ruby_regex(pattern):
    """Fluent Bit's regexes are Onigmo's: named groups are (?<name>...), Python's (?P<name>...)."""
    return re.sub(r"\(\?<(?=[A-Za-z_])", "(?P<", pattern)


def strptime(value, fluent_format):
    """Fluent Bit's %L is fractional seconds; Python reads up to 6 digits with %f."""
    fmt = fluent_format.replace("%L", "%f")
    if "." in value:
        head, tail = value.split(".", 1)
        digits = re.match(r"\d+", tail).group(0)
        value = f"{head}.{digits[:6]}{tail[len(digits):]}"
    return datetime.datetime.strptime(value, fmt)


def accessor(record, expression):
    """Resolves a record accessor ($a, $a['b']['c']) against the record."""
    check(expression.startswith("$"), f"{expression!r} is not a record accessor")
    head = re.match(r"\$([A-Za-z0-9_]+)", expression)
    check(head, f"bad accessor {expression}")
    value = record.get(head.group(1))
    for key in re.findall(r"\['([^']+)'\]", expression[head.end():]):
        check(isinstance(value, dict), f"{expression}: no {key}")
        value = value.get(key)
    check(value is not None, f"{expression}: the record has no such field; fields: {sorted(record)}")
    return value


def main(daemonset_path, consumer_path, line_path):
    daemonset, ds_parsers = load(daemonset_path)
    consumer, _ = load(consumer_path)
    moa_line = open(line_path).read().strip().splitlines()[0]
    json.loads(moa_line)

    # DaemonSet: tail with the cri parser, then the JSON parser filter on `log`.
    tail = next(p for p in daemonset["pipeline"]["inputs"] if p["name"] == "tail")
    cri = ds_parsers[tail["parser"]]
    cri_line = f"2026-11-30T12:00:00.123456789+00:00 stderr F {moa_line}"
    match = re.match(ruby_regex(cri["regex"]), cri_line)
    check(match, "the cri parser does not split a CRI line")
    record = match.groupdict()
    strptime(record[cri["time_key"]], cri["time_format"])
    json_filter = next(p for p in daemonset["pipeline"]["filters"] if p["name"] == "parser")
    json_parser = ds_parsers[json_filter["parser"]]
    lifted = json.loads(record[json_filter["key_name"]])
    strptime(lifted[json_parser["time_key"]], json_parser["time_format"])
    if json_filter.get("preserve_key") in (False, "off"):
        record.pop(json_filter["key_name"])
    record.update(lifted)
    record["kubernetes"] = {
        "namespace_name": "shop",
        "pod_name": "moa-7d9f-abcde",
        "labels": {"app.kubernetes.io/component": "host", "app.kubernetes.io/name": "moa"},
    }
    kafka_out = next(p for p in daemonset["pipeline"]["outputs"] if p["name"] == "kafka")
    key_field = kafka_out.get("message_key_field")
    if key_field:
        check(key_field in record, f"kafka message_key_field {key_field!r} is not in moa's record")
    kafka_in = next(p for p in consumer["pipeline"]["inputs"] if p["name"] == "kafka")
    check(kafka_in["topics"] == kafka_out["topics"], "the consumer reads another topic than the DaemonSet writes")

    # Consumer: the Kafka input nests the record under `payload`; the nest filter lifts it.
    consumed = {"payload": json.loads(json.dumps(record)), "topic": kafka_in["topics"]}
    for plugin in consumer["pipeline"].get("filters", []):
        if plugin["name"] == "nest" and plugin["operation"] == "lift":
            consumed.update(consumed.pop(plugin["nested_under"]))
    loki = next(p for p in consumer["pipeline"]["outputs"] if p["name"] == "loki")
    labels = {}
    for item in [s.strip() for s in str(loki.get("labels", "")).split(",") if s.strip()]:
        name, _, value = item.partition("=")
        check(name and value, f"loki label {item!r}: want name=value")
        labels[name] = accessor(consumed, value) if value.startswith("$") else value
    for key in [s.strip() for s in str(loki.get("label_keys", "")).split(",") if s.strip()]:
        labels[key.lstrip("$")] = accessor(consumed, key)
    for name in labels:
        check(name not in HIGH_CARDINALITY, f"loki label {name!r} has unbounded values")
    for key in [s.strip() for s in str(loki.get("remove_keys", "")).split(",") if s.strip()]:
        consumed.pop(key, None)
    for field in ("trace_id", "request_id", "message", "level"):
        if field in lifted:
            check(field in consumed, f"{field} does not reach Loki's line")
    print(f"fluent bit configs parse; Loki labels from moa's line: {labels}")
    print(f"fields kept in the line: {sorted(consumed)}")


if __name__ == "__main__":
    try:
        main(*sys.argv[1:4])
    except (Failure, KeyError, StopIteration, ValueError, re.error) as error:
        print(f"FAIL: {type(error).__name__}: {error}")
        sys.exit(1)
