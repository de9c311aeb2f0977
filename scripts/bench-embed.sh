#!/usr/bin/env bash
# Embedding benchmark (not a test). One run, the same model file, the same thread budget (THREADS,
# default 2) for every contender, review texts from ../shared/data/nsmc-reviews.jsonl.gz:
#   (a) bare ONNX Runtime: one session in one Rust process, no server, no batcher, three ways:
#       batches of 32 in arrival order, batches of 32 after sorting every text by token count
#       (tokenizing and sorting inside the clock: the offline bulk best case), and batch 1. The
#       strongest of the three is the RESULT's bare baseline;
#   (b) moa-model-runtime over gRPC: 1 client, then 32 concurrent clients, each sending single
#       texts (the dynamic batcher has to form the batches);
#   (c) Python sentence-transformers on torch CPU (scripts/model/setup-st.sh), batch 32.
#
#   scripts/bench-embed.sh               # TEXTS=2000 texts (single-client run: TEXTS/4)
#   TEXTS=8000 THREADS=2 scripts/bench-embed.sh
#   MOA_MODEL_DIR=~/.cache/moa/models/multilingual-e5-small-int8 scripts/bench-embed.sh   # int8
#     (after scripts/fetch-model.sh --int8; the Python baseline stays fp32 torch)
#
# Ends with: RESULT embed model=... moa_sent_s=... bare_ort_sent_s=... moa_vs_bare=...
#            python_st_sent_s=... moa_vs_python=... gflops=... peak_share=... p99_ms_single=...
# gflops: moa's useful work (matmul FLOPs per real token, counted from the ONNX graph, times tokens/s);
# peak_share: against THREADS cores × clock × FP32 FLOPs per cycle (64 with AVX-512, 32 with AVX2+FMA;
# set PEAK_GFLOPS to override).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
unset RUST_BACKTRACE RUST_LIB_BACKTRACE

TEXTS="${TEXTS:-2000}"
THREADS="${THREADS:-2}"
DATA="$MOA_ROOT/../shared/data/nsmc-reviews.jsonl.gz"
[ -f "$DATA" ] || { echo "error: $DATA not found (../shared beside the clone)" >&2; exit 2; }

ensure_toolchain
"$MOA_ROOT/scripts/fetch-model.sh"
log "building moa-model-runtime and the benchmark driver (release)"
(cd "$MOA_ROOT" && cargo build --release --workspace --bin moa-model-runtime --example bench_embed)

WORK="$(mktemp -d)"
PID=""
cleanup() {
  [ -n "$PID" ] && { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }
  rm -rf "$WORK"
}
trap cleanup EXIT

# The first TEXTS non-empty reviews, one per line.
python3 - "$DATA" "$TEXTS" >"$WORK/texts.txt" <<'PY'
import gzip, json, sys
n = int(sys.argv[2])
with gzip.open(sys.argv[1], "rt", encoding="utf-8") as f:
    for line in f:
        text = " ".join(json.loads(line)["text"].split())
        if text:
            print(text)
            n -= 1
            if n == 0:
                break
PY
head -n $((TEXTS / 4)) "$WORK/texts.txt" >"$WORK/single.txt"
log "$(wc -l <"$WORK/texts.txt") review texts, $THREADS threads for every contender"
BENCH="$CARGO_TARGET_DIR/release/examples/bench_embed"
value() { sed -n "s/.*\b$1=\([0-9.]*\).*/\1/p" <<<"$2"; }

log "(a) bare ONNX Runtime, batch 32, arrival order"
BARE_ARRIVAL="$("$BENCH" bare "$WORK/texts.txt" --threads "$THREADS" --batch 32)"
echo "$BARE_ARRIVAL"
log "(a) bare ONNX Runtime, batch 32, sorted by token count (tokenizing and sorting inside the clock)"
BARE_SORTED="$("$BENCH" bare "$WORK/texts.txt" --threads "$THREADS" --batch 32 --sorted)"
echo "$BARE_SORTED"
log "(a) bare ONNX Runtime, batch 1"
BARE_ONE="$("$BENCH" bare "$WORK/texts.txt" --threads "$THREADS" --batch 1)"
echo "$BARE_ONE"
BARE="$(printf '%s\n' "$BARE_ARRIVAL" "$BARE_SORTED" "$BARE_ONE" \
  | awk '{for (i=1;i<=NF;i++) if ($i ~ /^sent_s=/) {split($i,a,"="); if (a[2]>best) {best=a[2]; line=$0}}} END {print line}')"
log "strongest bare baseline: $BARE"

PORT="$(free_port)"
"$CARGO_TARGET_DIR/release/moa-model-runtime" serve --listen "127.0.0.1:$PORT" --threads "$THREADS" \
  --shutdown-grace-ms 0 --log-format text >"$WORK/runtime.log" 2>&1 &
PID=$!
log "(b) moa-model-runtime over gRPC, 1 client"
SINGLE="$("$BENCH" grpc "$WORK/single.txt" --endpoint "http://127.0.0.1:$PORT" --concurrency 1)"
echo "$SINGLE"
log "(b) moa-model-runtime over gRPC, 32 concurrent single-text clients"
MANY="$("$BENCH" grpc "$WORK/texts.txt" --endpoint "http://127.0.0.1:$PORT" --concurrency 32)"
echo "$MANY"
kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""

log "(c) Python sentence-transformers (torch CPU), batch 32"
PY_ST="n/a"
if "$MOA_ROOT/scripts/model/setup-st.sh" >/dev/null 2>"$WORK/st-setup.err"; then
  ST_LINE="$("$MOA_CACHE_HOME/venv-st/bin/python" "$MOA_ROOT/scripts/model/bench_st.py" \
    --model "$MOA_CACHE_HOME/models/multilingual-e5-small-hf" --texts-file "$WORK/texts.txt" \
    --batch 32 --threads "$THREADS" | tail -n 1)"
  echo "$ST_LINE"
  PY_ST="$(value st_sent_s "$ST_LINE")"
else
  echo "python sentence-transformers not measured: $(tail -n 1 "$WORK/st-setup.err")"
fi

MOA="$(value sent_s "$MANY")"
BARE_S="$(value sent_s "$BARE")"
TOKENS="$(value tokens "$BARE_SORTED")"
MODEL_DIR="${MOA_MODEL_DIR:-$MOA_CACHE_HOME/models/multilingual-e5-small}"
# Multiply-accumulates per token of every MatMul/Gemm with a weight initializer (attention scores,
# which grow with the sequence, are left out: the figure is a floor of the useful work).
FLOPS_PER_TOKEN="$("$MOA_CACHE_HOME/venv-model/bin/python" - "$MODEL_DIR/model.onnx" <<'PY'
import sys, onnx
model = onnx.load(sys.argv[1], load_external_data=False)
shapes = {i.name: list(i.dims) for i in model.graph.initializer}
flops = 0
for node in model.graph.node:
    if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 and node.input[1] in shapes:
        dims = shapes[node.input[1]]
        if len(dims) == 2:
            flops += 2 * dims[0] * dims[1]
print(flops)
PY
)"
PEAK="${PEAK_GFLOPS:-$(python3 - "$THREADS" <<'PY'
import sys
threads = int(sys.argv[1])
info = open("/proc/cpuinfo").read()
flags = next(l for l in info.splitlines() if l.startswith("flags")).split()
mhz = float(next(l for l in info.splitlines() if l.startswith("cpu MHz")).split(":")[1])
per_cycle = 64 if "avx512f" in flags else 32 if ("avx2" in flags and "fma" in flags) else 16
print(f"{threads * mhz / 1000 * per_cycle:.1f}")
PY
)}"
TEXT_COUNT="$(wc -l <"$WORK/texts.txt")"
GFLOPS="$(python3 -c "print(f'{$MOA * $TOKENS / $TEXT_COUNT * $FLOPS_PER_TOKEN / 1e9:.1f}')")"
PEAK_SHARE="$(python3 -c "print(f'{$GFLOPS / $PEAK:.3f}')")"
log "$TOKENS tokens in $TEXT_COUNT texts, $FLOPS_PER_TOKEN matmul FLOPs per token: moa does $GFLOPS GFLOP/s of a $PEAK GFLOP/s FP32 peak"
P99="$(value p99_ms "$SINGLE")"
ratio() { python3 -c "import sys; a,b=sys.argv[1:]; print('n/a' if 'n/a' in (a,b) else f'{float(a)/float(b):.2f}')" "$1" "$2"; }
MODEL="$(python3 -c 'import json,sys;c=json.load(open(sys.argv[1]));print(c["model_id"].split("/")[-1]+("-"+c["weights"] if c.get("weights") else ""))' \
  "${MOA_MODEL_DIR:-$MOA_CACHE_HOME/models/multilingual-e5-small}/moa.json")"
echo "RESULT embed model=$MODEL moa_sent_s=$MOA bare_ort_sent_s=$BARE_S moa_vs_bare=$(ratio "$MOA" "$BARE_S") python_st_sent_s=$PY_ST moa_vs_python=$(ratio "$MOA" "$PY_ST") gflops=$GFLOPS peak_share=$PEAK_SHARE p99_ms_single=$P99"
