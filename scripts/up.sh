#!/usr/bin/env bash
# Sets up a fresh machine, builds the host and the reference app, and serves it on embedded
# defaults (no servers needed) on http://127.0.0.1:3000: the commerce app (/stores, /orders, ...;
# see the README's tour and ./scripts/seed.sh), the AI chat (/chat; reviews from
# ./scripts/seed-reviews.sh) and the examples /hello, /p2, /counter.
# It also starts the two local stand-ins the app's dev defaults point at, and stops them on exit:
#   the Toss Payments emulator   http://127.0.0.1:3082  (TOSS_EMULATOR_LISTEN)
#   the dev token issuer         http://127.0.0.1:3081  (DEV_ISSUER_LISTEN; key in .moa/)
# Extra arguments go to `moa up` (e.g. --listen 0.0.0.0:3000, --runtime-config config/real.toml).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ensure_toolchain
# The AI chat's embeddings run in-process on embedded defaults: the model (about 1 min once).
"$(dirname "$0")/fetch-model.sh"
build_host
build_dev_services
build_components
cd "$MOA_ROOT"

TOSS_EMULATOR_LISTEN="${TOSS_EMULATOR_LISTEN:-127.0.0.1:3082}"
DEV_ISSUER_LISTEN="${DEV_ISSUER_LISTEN:-127.0.0.1:3081}"
# The emulator accepts any test_sk_ key; a real key comes from the environment, never from the repo.
export MOA_VARIABLE_TOSS_SECRET_KEY="${MOA_VARIABLE_TOSS_SECRET_KEY:-test_sk_moa_dev}"
export MOA_VARIABLE_TOSS_BASE_URL="${MOA_VARIABLE_TOSS_BASE_URL:-http://$TOSS_EMULATOR_LISTEN}"
export MOA_VARIABLE_AUTH_ISSUER="${MOA_VARIABLE_AUTH_ISSUER:-http://$DEV_ISSUER_LISTEN}"
export MOA_VARIABLE_AUTH_JWKS_ORIGIN="${MOA_VARIABLE_AUTH_JWKS_ORIGIN:-http://$DEV_ISSUER_LISTEN}"

pids=()
stop_services() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap stop_services EXIT INT TERM
for address in "$TOSS_EMULATOR_LISTEN" "$DEV_ISSUER_LISTEN"; do
  if (exec 3<>"/dev/tcp/${address%:*}/${address##*:}") 2>/dev/null; then
    echo "something already listens on $address; stop it or set TOSS_EMULATOR_LISTEN / DEV_ISSUER_LISTEN" >&2
    exit 1
  fi
done
"$CARGO_TARGET_DIR/release/toss-emulator" --listen "$TOSS_EMULATOR_LISTEN" &
pids+=($!)
"$CARGO_TARGET_DIR/release/dev-issuer" --listen "$DEV_ISSUER_LISTEN" --key-file .moa/dev-issuer-key.pem &
pids+=($!)
wait_port "${TOSS_EMULATOR_LISTEN##*:}"
wait_port "${DEV_ISSUER_LISTEN##*:}"
"$MOA_BIN" up -f spin.toml --log-format text "$@"
