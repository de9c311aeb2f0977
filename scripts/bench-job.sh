#!/usr/bin/env bash
# The review job (the reference app's `review-import`) over the shared reviews, end to end, beside
# the model runtime's own embedding rate on the same texts, in one run on one model runtime:
#   (a) the runtime alone: embed_reviews sends SAMPLE reviews spread over the job's input (every
#       K-th, cleaned as the job cleans them, `passage`) in batches of 128, 4 in flight, once before
#       and once after the job (the mean: a 2-core box drifts over an hour): the rate the job cannot beat;
#   (b) the job: `moa job run review-import` with [embedding] over gRPC to that runtime, documents
#       and vectors on the embedded defaults, the sentiment classifier on; reviews/s end to end.
# embed_share: of the chunks' time in the job, the share spent in generate-embeddings calls;
# model_runtime_util: the runtime's inference seconds / the job's wall time (1.0 = never idle).
#
#   scripts/bench-job.sh               # all 637,843 reviews (about 100 min on 2 cores)
#   LIMIT=20000 scripts/bench-job.sh   # the first LIMIT reviews
#   SAMPLE=4000                        # texts for (a)
#   MOA_REUSE_BUILD=1                  # skip the build (use what scripts/test.sh built)
#   MOA_MODEL_DIR=~/.cache/moa/models/multilingual-e5-small-int8   # the int8 model (fetch-model.sh --int8)
#   MOA_RUNTIME_ARGS="--no-spinning"   # more flags for moa-model-runtime serve (both (a) and (b))
#
# Ends with: RESULT job reviews=... reviews_s=... embed_share=... model_runtime_util=...
#            runtime_sent_s=... ratio=...   (target: ratio >= 0.8)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

DATA="$MOA_ROOT/../shared/data/nsmc-reviews.jsonl.gz"
LIMIT="${LIMIT:-}"
SAMPLE="${SAMPLE:-4000}"
[ -f "$DATA" ] || { echo "error: $DATA not found (../shared beside the clone)" >&2; exit 2; }

ensure_toolchain
"$MOA_ROOT/scripts/fetch-model.sh"
if [ -n "${MOA_REUSE_BUILD:-}" ] && [ -x "$MOA_BIN" ]; then
  log "MOA_REUSE_BUILD: using the binaries and components already built"
else
  log "building moa, moa-model-runtime and embed_reviews (release), and the components"
  (cd "$MOA_ROOT" && cargo build --release --workspace --bin moa --bin moa-model-runtime --example embed_reviews)
  build_components
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/moa-bench-job.XXXXXX")"
PID=""
cleanup() {
  [ -n "$PID" ] && { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }
  rm -rf "$WORK"
}
trap cleanup EXIT
PORT="$(free_port)"; ADMIN="$(free_port)"
"$CARGO_TARGET_DIR/release/moa-model-runtime" serve --listen "127.0.0.1:$PORT" \
  --admin-listen "127.0.0.1:$ADMIN" --shutdown-grace-ms 0 --log-format text ${MOA_RUNTIME_ARGS:-} \
  >"$WORK/runtime.log" 2>&1 &
PID=$!
for _ in $(seq 1 1200); do
  curl -fsS "http://127.0.0.1:$ADMIN/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
busy() { curl -fsS "http://127.0.0.1:$ADMIN/metrics" | awk '/inference_seconds_sum/ {print $2}'; }

if [ -n "$LIMIT" ]; then
  INPUT="$WORK/reviews.jsonl"
  { gzip -cd "$DATA" | head -n "$LIMIT" >"$INPUT"; } || true
  LINES="$(wc -l <"$INPUT")"
else
  INPUT="$DATA"
  LINES="$(gzip -cd "$DATA" | wc -l)"
fi
EVERY=$(( LINES / SAMPLE > 1 ? LINES / SAMPLE : 1 ))
runtime_alone() {
  log "(a) the model runtime alone ($1): every ${EVERY}th of $LINES reviews, at most $SAMPLE"
  rm -rf "$WORK/sample"
  "$CARGO_TARGET_DIR/release/examples/embed_reviews" "http://127.0.0.1:$PORT" "$INPUT" "$WORK/sample" \
    --every "$EVERY" --limit "$SAMPLE" | tee "$WORK/sample-$1.txt"
  sed -n 's/.*per_s=\([0-9.]*\).*/\1/p' "$WORK/sample-$1.txt"
}
RATE_BEFORE="$(runtime_alone before | tail -n 1)"
cat >"$WORK/runtime-config.toml" <<TOML
[embedding]
type = "grpc"
endpoint = "http://127.0.0.1:$PORT"
timeout_ms = 120000
TOML
# The reference app requires the Toss secret key at load; the review job never calls Toss.
export MOA_VARIABLE_TOSS_SECRET_KEY="${MOA_VARIABLE_TOSS_SECRET_KEY:-test_sk_unused_by_the_review_job}"
BUSY_BEFORE="$(busy)"
log "(b) the review job over ${LIMIT:-every} review(s) of $(basename "$DATA")"
START="$(date +%s.%N)"
"$MOA_BIN" job run review-import -f "$MOA_ROOT/spin.toml" --runtime-config-file "$WORK/runtime-config.toml" \
  --state-dir "$WORK/state" --param "input=$INPUT" --quiet --metrics-file "$WORK/job.prom" | tee "$WORK/job.txt"
END="$(date +%s.%N)"
BUSY_AFTER="$(busy)"
RATE_AFTER="$(runtime_alone after | tail -n 1)"
RUNTIME_RATE="$(python3 -c "import sys; print((float(sys.argv[1]) + float(sys.argv[2])) / 2)" "$RATE_BEFORE" "$RATE_AFTER")"
log "the runtime alone: $RATE_BEFORE sentences/s before the job, $RATE_AFTER after"

python3 - "$WORK/job.prom" "$WORK/job.txt" "$START" "$END" "$BUSY_BEFORE" "$BUSY_AFTER" "$RUNTIME_RATE" <<'PY'
import re, sys
prom, out, start, end, b0, b1, rate = sys.argv[1:]
metrics = open(prom).read()
def total(name):
    return sum(float(m) for m in re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", metrics, re.M))
wall = float(end) - float(start)
written = re.search(r"COMPLETED: (\d+) records written, (\d+) skipped", open(out).read())
reviews, skipped = int(written[1]), int(written[2])
chunk_s = total("moa_job_chunk_seconds_sum")
embed_s = total("moa_llm_embedding_call_seconds_sum")
busy = float(b1) - float(b0)
rate = float(rate)
reviews_s = (reviews + skipped) / wall
print(f"job wall_s={wall:.1f} written={reviews} skipped={skipped} chunk_s={chunk_s:.1f} embed_call_s={embed_s:.1f} runtime_busy_s={busy:.1f}")
print(f"RESULT job reviews={reviews + skipped} reviews_s={reviews_s:.1f} embed_share={embed_s / max(chunk_s, 1e-9):.2f} "
      f"model_runtime_util={busy / wall:.2f} runtime_sent_s={rate:.1f} ratio={reviews_s / rate:.2f}")
PY
