#!/usr/bin/env bash
# Checks the commerce and chat APIs against their OpenAPI documents (docs/api/commerce.yaml,
# docs/api/chat.yaml) with schemathesis:
# starts the reference app on embedded defaults (own state dir, free ports) with the Toss emulator
# and the dev issuer, seeds it, then lets schemathesis generate requests for every operation as an
# ADMIN (every route) and as a CUSTOMER. Fails on any 5xx, an undocumented status, or a response
# that does not match its schema. scripts/test.sh runs it after the Rust tests.
#   MAX_EXAMPLES (default 30) generated cases per operation and phase.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ensure_toolchain
ensure_schemathesis
# scripts/test.sh runs this after `cargo test`, whose build already holds the binaries.
if [ "${MOA_API_CHECK_PREBUILT:-}" != 1 ]; then
  build_host
  build_dev_services
  build_components
fi

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
APP_PORT="$(free_port)"; ADMIN_PORT="$(free_port)"; TOSS_PORT="$(free_port)"; ISSUER_PORT="$(free_port)"
"$CARGO_TARGET_DIR/release/toss-emulator" --listen "127.0.0.1:$TOSS_PORT" >"$WORK/toss.log" 2>&1 &
PIDS+=($!)
"$CARGO_TARGET_DIR/release/dev-issuer" --listen "127.0.0.1:$ISSUER_PORT" --key-file "$WORK/key.pem" >"$WORK/issuer.log" 2>&1 &
PIDS+=($!)
wait_port "$TOSS_PORT"; wait_port "$ISSUER_PORT"
MOA_VARIABLE_AUTH_ISSUER="http://127.0.0.1:$ISSUER_PORT" MOA_VARIABLE_AUTH_JWKS_ORIGIN="http://127.0.0.1:$ISSUER_PORT" \
MOA_VARIABLE_TOSS_BASE_URL="http://127.0.0.1:$TOSS_PORT" MOA_VARIABLE_TOSS_SECRET_KEY="test_sk_api_check" \
  "$MOA_BIN" up -f "$MOA_ROOT/spin.toml" --listen "127.0.0.1:$APP_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
  --state-dir "$WORK/state" --log-format json >"$WORK/moa.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 600); do
  curl -fsS "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null || { tail -30 "$WORK/moa.log"; exit 1; }
MOA_TOKENS_FILE="$WORK/tokens.env" "$MOA_ROOT/scripts/seed.sh" "http://127.0.0.1:$APP_PORT" "http://127.0.0.1:$ISSUER_PORT" >/dev/null
source "$WORK/tokens.env"

status=0
for api in commerce chat; do
  for who in ADMIN CUSTOMER; do
    token_var="${who}_TOKEN"
    log "schemathesis: docs/api/$api.yaml as $who"
    (cd "$WORK" && "$MOA_SCHEMATHESIS" run "$MOA_ROOT/docs/api/$api.yaml" --url "http://127.0.0.1:$APP_PORT" \
      -H "Authorization: Bearer ${!token_var}" \
      --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
      --max-examples "${MAX_EXAMPLES:-30}" --seed 1 --workers 2 --generation-database none \
      --phases examples,coverage,fuzzing --no-color) || status=1
  done
done
if [ "$status" -ne 0 ]; then
  log "the API does not match docs/api/{commerce,chat}.yaml; moa's log:"
  grep -E '"level":"(ERROR|WARN)"' "$WORK/moa.log" | tail -20 || true
fi
exit "$status"
