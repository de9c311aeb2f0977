#!/usr/bin/env bash
# The review sentiment classifier: accuracy of ratings 1-4 vs 9-10 predicted from the review text
# alone (the rating hidden), on reviews of stores the classifier was not trained on.
#
#   scripts/eval-sentiment.sh                  # held-out stores of ../shared/data/nsmc-reviews.jsonl.gz
#   scripts/eval-sentiment.sh OTHER.jsonl.gz   # every labelled review of another file (same format)
#   TRAIN=1 scripts/eval-sentiment.sh          # train components/review-job/models/sentiment-e5-small.json again
#   EVERY=20 EVAL_LIMIT=5000 ...               # sampling: every EVERY-th labelled review for
#                                              # training; at most EVAL_LIMIT reviews of OTHER
#
# The model file (logistic regression over the passage embeddings the review job stores) is trained
# from the shared data when missing; the review job loads it (`sentiment_model` job parameter).
# Ends with: RESULT sentiment accuracy=... n=...
set -euo pipefail
source "$(dirname "$0")/lib.sh"

DATA="$MOA_ROOT/../shared/data/nsmc-reviews.jsonl.gz"
MODEL="$MOA_ROOT/components/review-job/models/sentiment-e5-small.json"
EVERY="${EVERY:-20}"
EVAL_LIMIT="${EVAL_LIMIT:-5000}"
WORK="$MOA_CACHE_HOME/sentiment"

ensure_toolchain
"$MOA_ROOT/scripts/fetch-model.sh"
log "building moa-model-runtime and embed_reviews (release)"
(cd "$MOA_ROOT" && cargo build --release --workspace --bin moa-model-runtime --example embed_reviews)
PY="$MOA_CACHE_HOME/venv-model/bin/python"

PORT="$(free_port)"
"$CARGO_TARGET_DIR/release/moa-model-runtime" serve --listen "127.0.0.1:$PORT" \
  --shutdown-grace-ms 0 --log-format text >"$WORK.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true' EXIT
ENDPOINT="http://127.0.0.1:$PORT"
mkdir -p "$WORK" "$(dirname "$MODEL")"

SAMPLE="$WORK/sample-every-$EVERY"
if [ ! -s "$SAMPLE/vectors.f32" ]; then
  log "embedding every ${EVERY}th labelled review of $(basename "$DATA") (cached in $SAMPLE)"
  "$CARGO_TARGET_DIR/release/examples/embed_reviews" "$ENDPOINT" "$DATA" "$SAMPLE" --labelled --every "$EVERY"
fi
if [ ! -s "$MODEL" ] || [ "${TRAIN:-0}" = "1" ]; then
  log "training $MODEL on the stores that are not held out"
  "$PY" "$MOA_ROOT/scripts/model/sentiment.py" train "$SAMPLE" "$MODEL"
fi
if [ "$#" -ge 1 ]; then
  OTHER="$WORK/other-$(basename "$1")"
  rm -rf "$OTHER"
  log "embedding up to $EVAL_LIMIT labelled reviews of $1"
  "$CARGO_TARGET_DIR/release/examples/embed_reviews" "$ENDPOINT" "$1" "$OTHER" --labelled --limit "$EVAL_LIMIT"
  "$PY" "$MOA_ROOT/scripts/model/sentiment.py" eval "$OTHER" "$MODEL" --all
else
  "$PY" "$MOA_ROOT/scripts/model/sentiment.py" eval "$SAMPLE" "$MODEL"
fi
