#!/usr/bin/env bash
# Saga benchmark (not a test), no faults: ORDERS (2000) orders from 16 clients, spread over 32 menu
# items, through the reference app's saga on one `moa up` host with Kafka (tansu, 8 partitions per
# topic) and Redis, end to end from the first order created to the last one COMPLETED (the orders'
# own timestamps); then, on the same broker in the same run, the raw broker's produce+consume rate
# (idempotent acks=all producer, group consumer storing offsets, no wasm) for ORDERS x 7 messages
# (a completed order is 7 saga messages).
# Two rounds: documents on MongoDB (SecantusDB; MONGO_ORDERS, default 300, because that server is
# the bottleneck), then documents embedded (SQLite); each prints its RESULT line with documents=...,
# the embedded one last. The MongoDB line also gives the server's own pace: raw_driver_tx_s, a saga
# step's transaction (read, update, outbox insert, commit) straight from the driver, 16 at a time,
# and tx_ratio = the saga's transactions per second (one per message) over it.
#
# Ends with: RESULT saga-bench orders_s=... raw_msgs_s=... msgs_per_order=7 ratio=... documents=embedded
#            (ratio = orders_s x msgs_per_order / raw_msgs_s)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
unset RUST_BACKTRACE RUST_LIB_BACKTRACE

prepare_saga_load
ensure_tansu

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${KEEP_WORK:-}" ]; then log "logs kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
for documents in mongodb embedded; do
  log "round: documents $documents"
  export SAGA_DOCUMENTS="$documents"
  mkdir -p "$WORK/$documents"
  start_saga_stack "$WORK/$documents"
  BROKER="exec $MOA_TANSU_BIN broker --listener-url tcp://127.0.0.1:$KAFKA_PORT --advertised-listener-url tcp://127.0.0.1:$KAFKA_PORT --storage-engine memory://tansu/"
  orders="${ORDERS:-2000}"
  # SecantusDB (a Python server) takes a few transactions per order per second: a smaller round.
  if [ "$documents" = mongodb ]; then orders="${MONGO_ORDERS:-300}"; fi
  run_saga_load bench "$BROKER" --orders "$orders" --clients 16 --hosts 1 --kills 0 --broker-restarts 0
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  PIDS=()
done
