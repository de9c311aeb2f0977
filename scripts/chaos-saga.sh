#!/usr/bin/env bash
# The saga's chaos check (a script, not a test). Starts Redis, SecantusDB, the Toss emulator, the
# dev issuer, a persistent tansu broker and two `moa up` hosts of the reference app sharing the
# consumer groups; places ORDERS (1000) orders from 16 clients, with 20% declines, 10% stock
# shortages and 5% payment timeouts (Toss charges, then answers after the adapter gave up);
# SIGKILLs a host three times at random moments (restarting it each time) and restarts the broker
# once; waits until quiet; then checks from MongoDB and the emulator's ledger that every order is
# terminal, charges net of refunds equal the completed orders exactly, and stock + sold = stocked.
#
#   scripts/chaos-saga.sh            # ORDERS=1000 SEED=7 by default; logs stay in $WORK on failure
#                                    # (and with KEEP_WORK=1)
#
# Ends with: RESULT saga orders=... terminal=... lost=0 double_charges=0 stock_mismatch=0
#            orders_per_s=... p99_order_ms=...
set -euo pipefail
source "$(dirname "$0")/lib.sh"
unset RUST_BACKTRACE RUST_LIB_BACKTRACE

prepare_saga_load
ensure_tansu_persistent

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
start_saga_stack "$WORK"
mkdir -p "$WORK/kafka"
BROKER="cd $WORK/kafka && exec $MOA_TANSU_PERSISTENT_BIN broker --listener-url tcp://127.0.0.1:$KAFKA_PORT --advertised-listener-url tcp://127.0.0.1:$KAFKA_PORT --storage-engine sqlite://tansu.db"
log "work dir $WORK (host, broker and server logs)"
if run_saga_load chaos "$BROKER" --orders "${ORDERS:-1000}" --clients 16 --hosts 2 --kills 3 \
    --broker-restarts 1 --seed "${SEED:-7}" | tee "$WORK/result.txt"; then
  grep -q 'lost=0 double_charges=0 stock_mismatch=0' "$WORK/result.txt" || { log "CHECK FAILED; logs in $WORK"; exit 1; }
  if [ -n "${KEEP_WORK:-}" ]; then log "logs kept in $WORK"; else rm -rf "$WORK"; fi
else
  log "the run failed; logs in $WORK"
  exit 1
fi
