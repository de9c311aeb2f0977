#!/usr/bin/env bash
# Documents benchmark (not a test), in one run on one SecantusDB and one Redis started here:
#   raw:      examples/mongo_raw.rs, the mongodb driver from a native loop: WORKERS tasks, each
#             ROUNDS rounds of insert + find-one-and-update ($inc) + find by an indexed field;
#   mongo:    the same rounds done by the docbench component through moa:documents on MongoDB
#             (WORKERS concurrent requests, one worker's ROUNDS each);
#   embedded: the same component on the embedded store;
#   outbox:   docbench commits WORKERS x OUTBOX_TX transactions on MongoDB, each inserting a document
#             and staging one outbox message, timed until the last message is on the Redis stream;
#   tx:       small durable transactions (read an account, $inc it, insert an entry): docbench's /tx
#             on the embedded store from TX_WORKERS concurrent requests of TX_N each, against
#             examples/sqlite_raw.rs doing the same statements on SQLite in one connection with
#             synchronous = FULL (what a naive loop gets); each ROUNDS_OF times, taking turns.
# Each of raw / mongo / embedded runs ROUNDS_OF times, taking turns, each on an empty database; each
# reports its median, and mongo_ratio is the median of the per-round moa/raw ratios.
#
#   scripts/bench-documents.sh        # WORKERS=4 ROUNDS=200 OUTBOX_TX=100 ROUNDS_OF=5 TX_WORKERS=16 TX_N=200
#
# Ends with: RESULT documents mongo_ops_s=... raw_mongo_ops_s=... mongo_ratio=... embedded_ops_s=... outbox_tx_s=...
#            embedded_tx_s=... raw_sqlite_tx_s=... tx_ratio=...
set -euo pipefail
source "$(dirname "$0")/lib.sh"

unset RUST_BACKTRACE RUST_LIB_BACKTRACE
WORKERS="${WORKERS:-4}"
ROUNDS="${ROUNDS:-200}"
OUTBOX_TX="${OUTBOX_TX:-100}"
ROUNDS_OF="${ROUNDS_OF:-5}"
TX_WORKERS="${TX_WORKERS:-16}"
TX_N="${TX_N:-200}"

ensure_toolchain
ensure_redis
ensure_secantus
log "building moa and the raw driver loop (release)"
(cd "$MOA_ROOT" && cargo build --release --workspace --bin moa --example mongo_raw --example sqlite_raw)
build_components

WORK="$(mktemp -d)"
PIDS=()
MOA_PID=""
cleanup() {
  [ -n "$MOA_PID" ] && kill "$MOA_PID" 2>/dev/null || true
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

MONGO_PORT="$(free_port)"
"$MOA_SECANTUS_PYTHON" -m secantus --host 127.0.0.1 --port "$MONGO_PORT" --storage-path "${MONGO_STORAGE:-$WORK/mongo}" \
  >"$WORK/secantus.log" 2>&1 &
PIDS+=($!)
REDIS_PORT="$(free_port)"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
wait_port "$REDIS_PORT"
for _ in $(seq 1 300); do (exec 3<>"/dev/tcp/127.0.0.1/$MONGO_PORT") 2>/dev/null && break; sleep 0.1; done
MONGO_URL="mongodb://127.0.0.1:$MONGO_PORT/?directConnection=true"
log "SecantusDB $("$MOA_SECANTUS_PYTHON" -m pip show secantusdb 2>/dev/null | awk '/^Version/ {print $2}') on 127.0.0.1:$MONGO_PORT (WiredTiger on disk), redis-server on 127.0.0.1:$REDIS_PORT"

APP="$WORK/app"
mkdir -p "$APP"
cat >"$APP/spin.toml" <<TOML
spin_manifest_version = 2
[application]
name = "docbench"
[[trigger.http]]
route = "/..."
component = "docbench"
[component.docbench]
source = "$MOA_ROOT/components/target/wasm32-wasip2/release/docbench.wasm"
document_stores = ["default"]
allowed_publish_topics = ["bench.outbox"]
[component.docbench.moa]
request_timeout_ms = 600000
[[component.docbench.document_indexes]]
collection = "bench"
keys = ["owner", "sku"]
TOML
# Every contender run starts on an empty database (SecantusDB slows down as a collection grows, so a
# shared one would favour whoever runs first).
mongo_config() { # database
  cat >"$WORK/mongo-$1.toml" <<TOML
[messaging.brokers.main]
type = "redis"
url = "redis://127.0.0.1:$REDIS_PORT"
[document_store.default]
type = "mongodb"
url = "$MONGO_URL"
database = "$1"
TOML
  echo "$WORK/mongo-$1.toml"
}
embedded_config() { # file
  cat >"$WORK/embedded-$1.toml" <<TOML
[messaging.brokers.main]
type = "redis"
url = "redis://127.0.0.1:$REDIS_PORT"
[document_store.default]
type = "embedded"
path = "$WORK/embedded-$1.db"
TOML
  echo "$WORK/embedded-$1.toml"
}

start_moa() { # runtime-config
  local port; port="$(free_port)"
  MOA_LOG=warn "$MOA_BIN" up -f "$APP/spin.toml" --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$(free_port)" \
    --state-dir "$WORK/state" --runtime-config-file "$1" >"$WORK/moa.log" 2>&1 &
  MOA_PID=$!
  wait_port "$port"
  MOA_URL="http://127.0.0.1:$port"
  curl -fsS "$MOA_URL/ops?n=5&w=999&run=warm$RANDOM" >/dev/null
}
stop_moa() { kill "$MOA_PID" 2>/dev/null || true; wait "$MOA_PID" 2>/dev/null || true; MOA_PID=""; }

now() { date +%s.%N; }

# WORKERS concurrent requests of one worker's ROUNDS each; prints ops/s.
moa_ops() { # run-id
  local start end
  start="$(now)"
  seq 0 $((WORKERS - 1)) | xargs -P "$WORKERS" -I{} curl -fsS -o /dev/null "$MOA_URL/ops?n=$ROUNDS&w={}&run=$1"
  end="$(now)"
  awk -v n=$((WORKERS * ROUNDS * 3)) -v s="$start" -v e="$end" 'BEGIN {printf "%.1f", n / (e - s)}'
}

raw_ops() { # database
  "$CARGO_TARGET_DIR/release/examples/mongo_raw" "$MONGO_URL" "$1" "$WORKERS" "$ROUNDS" | sed 's/.*ops_s=//'
}

median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print v[int((NR + 1) / 2)]}'; }

drop_db() { "$CARGO_TARGET_DIR/release/examples/mongo_raw" "$MONGO_URL" "$1" drop; }
run_raw() { RAW+=("$(raw_ops "raw$1")"); drop_db "raw$1"; }
run_moa() { start_moa "$(mongo_config "moa$1")"; MONGO+=("$(moa_ops "m$1")"); stop_moa; drop_db "moa$1"; }

# SecantusDB's speed drifts during a run, so the mongo ratio is the median of per-round ratios, and
# raw and moa take turns going first.
RAW=(); MONGO=(); EMBEDDED=(); RATIOS=()
# ONLY_TX=1 runs just the small-transaction rounds (a quick check while working on the store).
MONGO_ROUNDS="$ROUNDS_OF"; [ -n "${ONLY_TX:-}" ] && MONGO_ROUNDS=0
for round in $(seq 1 "$MONGO_ROUNDS"); do
  if [ $((round % 2)) -eq 1 ]; then run_raw "$round"; run_moa "$round"; else run_moa "$round"; run_raw "$round"; fi
  start_moa "$(embedded_config "e$round")"; EMBEDDED+=("$(moa_ops "e$round")"); stop_moa
  RATIOS+=("$(awk -v a="${MONGO[-1]}" -v b="${RAW[-1]}" 'BEGIN {printf "%.3f", a / b}')")
  log "round $round: raw ${RAW[-1]} ops/s, moa on MongoDB ${MONGO[-1]} ops/s (ratio ${RATIOS[-1]}), moa embedded ${EMBEDDED[-1]} ops/s"
done

# Outbox: committed transactions per second, until the last message is on the stream.
if [ -z "${ONLY_TX:-}" ]; then
start_moa "$(mongo_config outbox)"
before="$(redis-cli -p "$REDIS_PORT" XLEN bench.outbox)"
want=$((before + WORKERS * OUTBOX_TX))
start="$(now)"
seq 0 $((WORKERS - 1)) | xargs -P "$WORKERS" -I{} curl -fsS -o /dev/null "$MOA_URL/outbox?n=$OUTBOX_TX&w={}&run=o$RANDOM"
for _ in $(seq 1 6000); do
  [ "$(redis-cli -p "$REDIS_PORT" XLEN bench.outbox)" -ge "$want" ] && break
  sleep 0.01
done
end="$(now)"
stop_moa
got="$(redis-cli -p "$REDIS_PORT" XLEN bench.outbox)"
[ "$got" -ge "$want" ] || { echo "error: only $((got - before)) of $((want - before)) outbox messages arrived" >&2; exit 1; }
OUTBOX_S="$(awk -v n=$((WORKERS * OUTBOX_TX)) -v s="$start" -v e="$end" 'BEGIN {printf "%.1f", n / (e - s)}')"
fi

# Small durable transactions: moa's embedded store (group commit) against raw SQLite in a loop.
EMB_TX=(); RAW_TX=()
moa_tx() { # run-id
  local start end
  start="$(now)"
  seq 0 $((TX_WORKERS - 1)) | xargs -P "$TX_WORKERS" -I{} curl -fsS -o /dev/null "$MOA_URL/tx?n=$TX_N&w={}&run=$1"
  end="$(now)"
  awk -v n=$((TX_WORKERS * TX_N)) -v s="$start" -v e="$end" 'BEGIN {printf "%.1f", n / (e - s)}'
}
for round in $(seq 1 "$ROUNDS_OF"); do
  raw_tx() { "$CARGO_TARGET_DIR/release/examples/sqlite_raw" "$WORK/raw-tx-$round.db" $((TX_WORKERS * TX_N)) | sed 's/.*tx_s=//'; }
  if [ $((round % 2)) -eq 1 ]; then RAW_TX+=("$(raw_tx)"); fi
  start_moa "$(embedded_config "tx$round")"; EMB_TX+=("$(moa_tx "t$round")"); stop_moa
  if [ $((round % 2)) -eq 0 ]; then RAW_TX+=("$(raw_tx)"); fi
  log "round $round: moa embedded ${EMB_TX[-1]} tx/s, raw SQLite (synchronous = FULL) ${RAW_TX[-1]} tx/s"
done
EMB_TX_M="$(median "${EMB_TX[@]}")"; RAW_TX_M="$(median "${RAW_TX[@]}")"
TX_RATIO="$(awk -v a="$EMB_TX_M" -v b="$RAW_TX_M" 'BEGIN {printf "%.2f", a / b}')"

if [ -n "${ONLY_TX:-}" ]; then
  echo "RESULT documents embedded_tx_s=$EMB_TX_M raw_sqlite_tx_s=$RAW_TX_M tx_ratio=$TX_RATIO"
  exit 0
fi
RAW_M="$(median "${RAW[@]}")"; MONGO_M="$(median "${MONGO[@]}")"; EMB_M="$(median "${EMBEDDED[@]}")"
RATIO="$(median "${RATIOS[@]}" | awk '{printf "%.2f", $1}')"
printf '\n%-34s %12s\n' "contender" "ops/s (median of $ROUNDS_OF)"
printf '%-34s %12s\n' "raw mongodb driver (native loop)" "$RAW_M" "moa docbench on MongoDB" "$MONGO_M" "moa docbench on the embedded store" "$EMB_M"
printf '%-34s %12s\n' "outbox transactions/s (to Redis)" "$OUTBOX_S"
printf '%-34s %12s\n' "embedded small tx/s (durable)" "$EMB_TX_M" "raw SQLite tx/s (FULL, one conn)" "$RAW_TX_M"
echo "RESULT documents mongo_ops_s=$MONGO_M raw_mongo_ops_s=$RAW_M mongo_ratio=$RATIO embedded_ops_s=$EMB_M outbox_tx_s=$OUTBOX_S embedded_tx_s=$EMB_TX_M raw_sqlite_tx_s=$RAW_TX_M tx_ratio=$TX_RATIO"
