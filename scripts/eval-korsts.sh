#!/usr/bin/env bash
# Korean similarity quality through the running service: starts moa-model-runtime on a free port
# (fetching the model first if needed), embeds both sentences of every pair of a KorSTS-format file
# over gRPC, and reports the Spearman correlation (x100) of cosine similarity against gold.
#
#   scripts/eval-korsts.sh                    # ../shared/data/korsts-dev.tsv (1,500 pairs)
#   scripts/eval-korsts.sh my-pairs.tsv       # any file in KorSTS format
#   MOA_MODEL_DIR=/models/kosimcse scripts/eval-korsts.sh   # another model directory
#   MOA_EVAL_ENDPOINT=http://host:50051 scripts/eval-korsts.sh   # a runtime that is already up
#
# Ends with: RESULT korsts model=... spearman=...
set -euo pipefail
source "$(dirname "$0")/lib.sh"
unset RUST_BACKTRACE RUST_LIB_BACKTRACE

FILE="${1:-$MOA_ROOT/../shared/data/korsts-dev.tsv}"
if [ ! -f "$FILE" ]; then
  echo "error: $FILE not found; pass a KorSTS-format .tsv (genre filename year id score sentence1 sentence2)" >&2
  exit 2
fi
FILE="$(cd "$(dirname "$FILE")" && pwd)/$(basename "$FILE")"

ensure_toolchain
log "building moa-model-runtime and the evaluator (release)"
(cd "$MOA_ROOT" && cargo build --release --workspace --bin moa-model-runtime --example eval_korsts)

ENDPOINT="${MOA_EVAL_ENDPOINT:-}"
if [ -z "$ENDPOINT" ]; then
  "$MOA_ROOT/scripts/fetch-model.sh"
  PORT="$(free_port)"
  LOG="$(mktemp)"
  "$CARGO_TARGET_DIR/release/moa-model-runtime" serve --listen "127.0.0.1:$PORT" \
    --shutdown-grace-ms 0 --log-format text >"$LOG" 2>&1 &
  PID=$!
  trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -f "$LOG"' EXIT
  ENDPOINT="http://127.0.0.1:$PORT"
  log "model runtime on $ENDPOINT (log: $LOG)"
fi
"$CARGO_TARGET_DIR/release/examples/eval_korsts" "$ENDPOINT" "$FILE"
