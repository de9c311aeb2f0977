#!/usr/bin/env bash
# Saga benchmark (not a test), no faults: ORDERS (2000) orders from 16 clients through the reference
# app's saga on one `moa up` host with Kafka (tansu), MongoDB (SecantusDB) and Redis, end to end
# from the first order placed to the last order COMPLETED; then, on the same broker in the same
# run, the raw broker's produce+consume rate (idempotent acks=all producer, group consumer storing
# offsets, no wasm) for ORDERS x 7 messages (a completed order is 7 saga messages).
#
# Ends with: RESULT saga-bench orders_s=... raw_msgs_s=... msgs_per_order=7 ratio=...
#            (ratio = orders_s x msgs_per_order / raw_msgs_s)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
unset RUST_BACKTRACE RUST_LIB_BACKTRACE

ensure_toolchain
ensure_redis
ensure_secantus
ensure_tansu
log "building moa, the dev services and the load driver (release)"
(cd "$MOA_ROOT" && cargo build --release -p moa --bin moa --example saga_load -p moa-toss-emulator -p moa-dev-issuer)
build_components

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
start_saga_stack "$WORK"
BROKER="exec $MOA_TANSU_BIN broker --listener-url tcp://127.0.0.1:$KAFKA_PORT --advertised-listener-url tcp://127.0.0.1:$KAFKA_PORT --storage-engine memory://tansu/"
run_saga_load bench "$BROKER" --orders "${ORDERS:-2000}" --clients 16 --hosts 1 --kills 0 --broker-restarts 0
