#!/usr/bin/env bash
# Seeds the reference app started by ./scripts/up.sh: mints dev tokens for three test users, then
# creates two stores with menus and stock. Tokens go to .moa/tokens.env (source it for the tour):
#   OWNER_TOKEN (owner-kim, OWNER), CUSTOMER_TOKEN (customer-lee, CUSTOMER), ADMIN_TOKEN (admin, ADMIN)
#   STORE_ID (the first store)
# Usage: ./scripts/seed.sh [app URL, default http://127.0.0.1:3000] [issuer URL, default http://127.0.0.1:3081]
set -euo pipefail
APP="${1:-${MOA_URL:-http://127.0.0.1:3000}}"
ISSUER="${2:-${DEV_ISSUER_URL:-http://127.0.0.1:3081}}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TOKENS="${MOA_TOKENS_FILE:-$ROOT/.moa/tokens.env}"
mkdir -p "$(dirname "$TOKENS")"

fail() { echo "seed: $*" >&2; exit 1; }
json_field() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

curl -fsS "$ISSUER/.well-known/jwks.json" >/dev/null 2>&1 \
  || fail "no dev issuer at $ISSUER: start the app with ./scripts/up.sh first"
curl -sS -o /dev/null "$APP/stores" 2>/dev/null || fail "no app at $APP: start it with ./scripts/up.sh first"

token() { # sub group
  curl -fsS -X POST "$ISSUER/token" -H 'content-type: application/json' \
    -d "{\"sub\": \"$1\", \"groups\": [\"$2\"], \"ttl_s\": 86400}" | json_field token
}
OWNER_TOKEN="$(token owner-kim OWNER)"
CUSTOMER_TOKEN="$(token customer-lee CUSTOMER)"
ADMIN_TOKEN="$(token admin ADMIN)"

call() { # method path body
  local out status
  out="$(curl -sS -w '\n%{http_code}' -X "$1" "$APP$2" -H "authorization: Bearer $OWNER_TOKEN" \
    -H 'content-type: application/json' ${3:+-d "$3"})"
  status="${out##*$'\n'}"
  case "$status" in 2*) printf '%s' "${out%$'\n'*}" ;; *) fail "$1 $2 answered $status: ${out%$'\n'*}" ;; esac
}

store() { # name, menu JSON items, "item=qty ..." stock
  local id
  id="$(call POST /stores "{\"name\": \"$1\"}" | json_field id)"
  call PUT "/stores/$id/menu" "{\"items\": $2}" >/dev/null
  for pair in $3; do
    call PUT "/inventory/$id/${pair%%=*}" "{\"quantity\": ${pair##*=}}" >/dev/null
  done
  echo "$id"
}

STORE_ID="$(store "김밥천국 강남점" \
  '[{"id": "kimbap", "name": "김밥", "price": 3500}, {"id": "ramyeon", "name": "라면", "price": 4500}, {"id": "tteokbokki", "name": "떡볶이", "price": 5000}]' \
  "kimbap=50 ramyeon=20 tteokbokki=10")"
SECOND_STORE_ID="$(store "한솥 역삼점" \
  '[{"id": "chicken-mayo", "name": "치킨마요", "price": 4300}, {"id": "bibimbap", "name": "비빔밥", "price": 6500}]' \
  "chicken-mayo=30 bibimbap=5")"

cat > "$TOKENS" <<ENV
OWNER_TOKEN=$OWNER_TOKEN
CUSTOMER_TOKEN=$CUSTOMER_TOKEN
ADMIN_TOKEN=$ADMIN_TOKEN
STORE_ID=$STORE_ID
SECOND_STORE_ID=$SECOND_STORE_ID
APP=$APP
ENV
echo "seeded: stores $STORE_ID, $SECOND_STORE_ID; tokens in $TOKENS (source it for the README's tour)"
