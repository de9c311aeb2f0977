#!/usr/bin/env bash
# Event benchmark (not a test): on one tansu broker and one Redis started here, in one run,
#   (a) raw clients, no wasm: an rdkafka produce+consume loop and an XADD / XREADGROUP / XACK loop;
#   (b) the same traffic through moa: the probe component publishes (publish-batch) and a
#       [[trigger.kafka]] / [[trigger.redis-stream]] delivers each message to the relay component.
# Every figure is end to end: first publish to last message committed (raw: offset stored / XACKed;
# moa: its own moa_event_commits_total). Each contender repeats rounds of MESSAGES until it has run
# BENCH_SECONDS (default 10), so a burst of half a second never decides a ratio.
#
#   scripts/bench-events.sh           # MESSAGES=20000 BENCH_SECONDS=10 by default
#   MOA_BENCH_EXTRA_RC=$'[engine]\nkeep_resident_kb = 0' scripts/bench-events.sh   # compare host settings
#
# Ends with: RESULT events kafka_msgs_s=... kafka_raw_msgs_s=... kafka_ratio=... redis_msgs_s=...
#            redis_raw_msgs_s=... redis_ratio=...
set -euo pipefail
source "$(dirname "$0")/lib.sh"

unset RUST_BACKTRACE RUST_LIB_BACKTRACE
MESSAGES="${MESSAGES:-20000}"

ensure_toolchain
ensure_redis
ensure_tansu
log "building moa and the benchmark driver (release)"
(cd "$MOA_ROOT" && cargo build --release --workspace --bin moa --example bench_events)
build_components

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

KAFKA_PORT="$(free_port)"
"$MOA_TANSU_BIN" broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
  --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" --storage-engine memory://tansu/ \
  >"$WORK/tansu.log" 2>&1 &
PIDS+=($!)
REDIS_PORT="$(free_port)"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
wait_port "$KAFKA_PORT"
wait_port "$REDIS_PORT"
log "tansu on 127.0.0.1:$KAFKA_PORT (in-memory storage), redis-server $(redis-server --version | awk '{print $3}') on 127.0.0.1:$REDIS_PORT"

RELEASE="$MOA_ROOT/components/target/wasm32-wasip2/release"
"$CARGO_TARGET_DIR/release/examples/bench_events" \
  --kafka "127.0.0.1:$KAFKA_PORT" \
  --redis "redis://127.0.0.1:$REDIS_PORT" \
  --moa "$MOA_BIN" \
  --probe "$RELEASE/probe.wasm" \
  --relay "$RELEASE/relay.wasm" \
  --messages "$MESSAGES"
