#!/usr/bin/env bash
# Loads reviews into the reference app with its review job (`moa job run review-import`): cleaned,
# labelled, embedded by the in-process model and written as documents and vectors into the app's
# state (.moa/), which a running ./scripts/up.sh sees at once. Then ask about a store:
#   source .moa/tokens.env   # from ./scripts/seed.sh
#   curl -X POST localhost:3000/chat -H "authorization: Bearer $CUSTOMER_TOKEN" \
#        -d '{"store_id": "10001", "question": "볼 만한가요?"}'
# Usage: ./scripts/seed-reviews.sh [N|all] [REVIEWS.jsonl[.gz]] [-- extra moa job run args]
#   N      the first N reviews (default 5000, about a minute on 2 cores; `all` is 637k, about 90 min)
#   file   default ../shared/data/nsmc-reviews.jsonl.gz (`movie_id` is the store id)
# The run is resumable: run it again after an interruption and it goes on where it stopped.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
LIMIT="${1:-5000}"
FILE="${2:-$MOA_ROOT/../shared/data/nsmc-reviews.jsonl.gz}"
shift $(( $# > 2 ? 2 : $# ))
[ "${1:-}" = "--" ] && shift
[ -f "$FILE" ] || { echo "seed-reviews: no review file at $FILE (pass one as the second argument)" >&2; exit 1; }
case "$LIMIT" in all | [0-9]*) ;; *) echo "seed-reviews: N must be a number or 'all', not '$LIMIT'" >&2; exit 1 ;; esac
[ -x "$MOA_BIN" ] || { echo "seed-reviews: $MOA_BIN is missing: run ./scripts/up.sh (or build_host) first" >&2; exit 1; }
"$(dirname "$0")/fetch-model.sh"
cd "$MOA_ROOT"
if [ "$LIMIT" = all ]; then
  INPUT="$(cd "$(dirname "$FILE")" && pwd)/$(basename "$FILE")"
else
  mkdir -p .moa/seed
  INPUT="$MOA_ROOT/.moa/seed/reviews-first-$LIMIT.jsonl"
  if [ ! -s "$INPUT" ]; then
    { gzip -cdf "$FILE" | head -n "$LIMIT" >"$INPUT.tmp"; } || true
    mv "$INPUT.tmp" "$INPUT"
  fi
fi
# The reference app requires the Toss secret key at load; the review job never calls Toss.
export MOA_VARIABLE_TOSS_SECRET_KEY="${MOA_VARIABLE_TOSS_SECRET_KEY:-test_sk_unused_by_the_review_job}"
log "review job over $INPUT"
"$MOA_BIN" job run review-import -f spin.toml --param "input=$INPUT" "$@"
