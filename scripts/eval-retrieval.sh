#!/usr/bin/env bash
# The AI chat's retrieval, evaluated on real reviews: questions about stores (seven aspects: acting,
# story, music, visuals, boredom, emotion, recommendation; NSMC's stores are films) are embedded
# with the `query` prefix and searched in moa's embedded index with the store filter inside the
# search, as `ai-chat` does. Retrieved reviews are graded by keyword and rating rules
# (host/moa/examples/eval_retrieval.rs, docs/reviews.md): a review mentioning the aspect is
# relevant (1), and with a rating on the question's side (e.g. 9-10 for "감동적인가요?") grade 2.
#
#   scripts/eval-retrieval.sh                   # the first LIMIT (50,000) reviews of the shared file
#   scripts/eval-retrieval.sh REVIEWS.jsonl.gz  # every review of that file (same format)
#   LIMIT=all scripts/eval-retrieval.sh         # all 637k (embedding takes about 90 min once)
#   MOA_MODEL_DIR=~/.cache/moa/models/multilingual-e5-small-int8 scripts/eval-retrieval.sh   # the int8 weights
#
# Baselines in the same run: the seed's retrieval (global top 100, then the store filter) and the
# store's first reviews without retrieval. Fails if any search returned another store's review or
# missed a small store's own.
# Ends with: RESULT retrieval store_precision=... ndcg10=... n=...
set -euo pipefail
source "$(dirname "$0")/lib.sh"

if [ $# -ge 1 ]; then
  DATA="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
  [ -f "$DATA" ] || { echo "eval-retrieval: no file $1" >&2; exit 1; }
  LIMIT=""
  CACHE="$MOA_CACHE_HOME/vectors-$(md5sum "$DATA" | cut -c1-12)${MOA_MODEL_DIR:+-$(basename "$MOA_MODEL_DIR")}"
else
  DATA="$MOA_ROOT/../shared/data/nsmc-reviews.jsonl.gz"
  LIMIT="${LIMIT:-50000}"
  [ "$LIMIT" = all ] && LIMIT=""
  CACHE="$MOA_CACHE_HOME/vectors-${LIMIT:-all}${MOA_MODEL_DIR:+-$(basename "$MOA_MODEL_DIR")}"
fi

ensure_toolchain
"$MOA_ROOT/scripts/fetch-model.sh"
log "building eval_retrieval (release)"
(cd "$MOA_ROOT" && cargo build --release --workspace --example eval_retrieval)
ensure_review_vectors "$CACHE" "$DATA" "$LIMIT"

PORT="$(free_port)"
"$CARGO_TARGET_DIR/release/moa-model-runtime" serve --listen "127.0.0.1:$PORT" \
  --shutdown-grace-ms 0 --log-format text >"$CACHE.eval.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
log "questions through moa's filtered search over $CACHE"
"$CARGO_TARGET_DIR/release/examples/eval_retrieval" "http://127.0.0.1:$PORT" "$CACHE" --questions "${QUESTIONS:-700}"
