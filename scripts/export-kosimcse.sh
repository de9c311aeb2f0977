#!/usr/bin/env bash
# The production model path: exports BM-K/KoSimCSE-roberta-multitask (Korean, 768-d, CLS pooling;
# KorSTS test 86.12 as published) from the Hugging Face hub to a moa model directory:
#   model.onnx (inputs input_ids, attention_mask; output last_hidden_state), tokenizer.json, moa.json
# optionally with a dynamic-int8 copy. Needs the hub (huggingface.co) and PyPI; the build machines
# here reach only PyPI, so there the script stops with exit code 3 and says so.
#
#   scripts/export-kosimcse.sh [OUT_DIR]          # default $MOA_CACHE_HOME/models/kosimcse-roberta-multitask
#   scripts/export-kosimcse.sh --int8 [OUT_DIR]   # also OUT_DIR-int8
#   then: MOA_MODEL_DIR=OUT_DIR scripts/eval-korsts.sh        (quality)
#         moa-model-runtime serve --model-dir OUT_DIR          (serving; ai_models = ["kosimcse-roberta-multitask"])
set -euo pipefail
source "$(dirname "$0")/lib.sh"

INT8=0
if [ "${1:-}" = "--int8" ]; then INT8=1; shift; fi
REPO="BM-K/KoSimCSE-roberta-multitask"
OUT="${1:-$MOA_CACHE_HOME/models/kosimcse-roberta-multitask}"
VENV="$MOA_CACHE_HOME/venv-export"
HUB="${HF_ENDPOINT:-https://huggingface.co}"

if ! python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=10)" \
     "$HUB/api/models/$REPO" >/dev/null 2>&1; then
  echo "error: $HUB is not reachable, so $REPO cannot be downloaded here." >&2
  echo "  help: run this where the hub is reachable (or set HF_ENDPOINT to a mirror), then copy $OUT" >&2
  echo "        to the model cache; the offline default is multilingual-e5-small (scripts/fetch-model.sh)." >&2
  exit 3
fi

if ! "$VENV/bin/python" -c 'import torch, transformers, onnx, onnxruntime' 2>/dev/null; then
  log "installing the export tools (PyPI: torch CPU, transformers, onnx, onnxruntime)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch==2.9.1 --index-url https://download.pytorch.org/whl/cpu \
    || "$VENV/bin/pip" install -q torch==2.9.1
  "$VENV/bin/pip" install -q transformers==4.57.3 onnx==1.23.2 onnxruntime==1.32.0 numpy==2.4.6
fi

mkdir -p "$OUT"
log "exporting $REPO to $OUT"
"$VENV/bin/python" - "$REPO" "$OUT" <<'PY'
import json, sys
import torch
from transformers import AutoModel, AutoTokenizer

repo, out = sys.argv[1], sys.argv[2]
tokenizer = AutoTokenizer.from_pretrained(repo)
model = AutoModel.from_pretrained(repo).eval()
sample = tokenizer(["한국어 문장 임베딩", "배달이 빨라요"], padding=True, return_tensors="pt")


class Encoder(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


dynamic = {0: "batch", 1: "tokens"}
torch.onnx.export(
    Encoder(model), (sample["input_ids"], sample["attention_mask"]), f"{out}/model.onnx",
    input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
    dynamic_axes={"input_ids": dynamic, "attention_mask": dynamic, "last_hidden_state": dynamic},
    opset_version=17, do_constant_folding=True, dynamo=False,
)
tokenizer.backend_tokenizer.no_padding()
tokenizer.backend_tokenizer.no_truncation()
tokenizer.backend_tokenizer.save(f"{out}/tokenizer.json")
json.dump({
    "model_id": repo,
    "dimension": model.config.hidden_size,
    "max_tokens": model.config.max_position_embeddings - 2,
    "pooling": "cls",
    "normalize": True,
    "query_prefix": "",
    "passage_prefix": "",
    "inputs": ["input_ids", "attention_mask"],
    "output": "last_hidden_state",
}, open(f"{out}/moa.json", "w"), indent=2)

# The export must give the same CLS vectors as PyTorch.
import numpy as np, onnxruntime as ort
session = ort.InferenceSession(f"{out}/model.onnx", providers=["CPUExecutionProvider"])
onnx_cls = session.run(None, {k: sample[k].numpy() for k in ("input_ids", "attention_mask")})[0][:, 0]
with torch.no_grad():
    torch_cls = Encoder(model)(sample["input_ids"], sample["attention_mask"])[:, 0].numpy()
gap = float(np.abs(onnx_cls - torch_cls).max())
print(f"max |onnx - torch| on CLS vectors: {gap:.2e}")
if gap > 1e-3:
    sys.exit("the ONNX export does not match PyTorch")
PY

if [ "$INT8" = 1 ]; then
  mkdir -p "$OUT-int8"
  "$VENV/bin/python" "$MOA_ROOT/scripts/model/quantize_int8.py" "$OUT/model.onnx" "$OUT-int8/model.onnx"
  cp "$OUT/tokenizer.json" "$OUT-int8/"
  sed "s#\"model_id\": \"$REPO\"#\"model_id\": \"$REPO-int8\"#" "$OUT/moa.json" >"$OUT-int8/moa.json"
  log "int8 copy: $OUT-int8"
fi
log "done: MOA_MODEL_DIR=$OUT scripts/eval-korsts.sh  measures it"
