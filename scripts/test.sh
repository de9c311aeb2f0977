#!/usr/bin/env bash
# Sets up a fresh machine and runs every test: unit tests and the integration tests, which start
# real `moa up` processes on ephemeral ports, then (without extra arguments) the commerce and chat APIs
# against their OpenAPI documents with schemathesis (scripts/api-check.sh) and the operations files
# with their validators (scripts/validate-ops.sh). Extra arguments go to `cargo test`.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ensure_toolchain
ensure_redis
ensure_mosquitto
ensure_postgres
ensure_mariadb
ensure_sqld
ensure_tansu
ensure_secantus
ensure_oci_registry
"$MOA_ROOT/scripts/fetch-model.sh"
build_components
cd "$MOA_ROOT"
log "running tests"
cargo test --release --workspace --no-fail-fast "$@"
log "running the unit tests of the components' native libraries (review-text)"
(cd "$MOA_ROOT/components" && cargo test --release -p review-text)
if [ "$#" -eq 0 ]; then
  log "checking the commerce API against docs/api/commerce.yaml (schemathesis)"
  MOA_API_CHECK_PREBUILT=1 "$MOA_ROOT/scripts/api-check.sh"
  log "validating the Helm chart, Dockerfiles, alert rules and dashboards (scripts/validate-ops.sh)"
  "$MOA_ROOT/scripts/validate-ops.sh"
fi
