"""Python baseline: sentence-transformers on torch CPU embedding Korean reviews (NSMC) with the model
directory written by export_e5_hf.py (multilingual-e5-small, as the Rust runtime serves it).

Benchmark (venv-st's python): the first N review texts, each prefixed "query: ", one warm-up batch,
then SentenceTransformer.encode(batch_size=B) over all N; the last line printed is
    st_sent_s=<float> texts=<N> batch=<B> threads=<t>

Check (--check-onnx MODEL_DIR): embeds --check-texts reviews (default 20) with sentence-transformers
and, in a child process run by --onnx-python (default: venv-model's, which has onnxruntime), with
MODEL_DIR/model.onnx + tokenizer.json (mean pooling incl. <s> and </s>, L2 normalised, as moa.json
says); prints `check_onnx min_cos=<float> texts=<n>` and exits 1 if min_cos < 0.999.

usage: bench_st.py --model DIR [--texts 2000] [--batch 32] [--threads 2] [--data FILE.jsonl.gz]
       bench_st.py --model DIR --check-onnx ONNX_MODEL_DIR [--check-texts 20]
"""

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.environ.get("MOA_CACHE_HOME", os.path.expanduser("~/.cache/moa"))
DEFAULT_DATA = os.path.normpath(os.path.join(HERE, "../../../shared/data/nsmc-reviews.jsonl.gz"))
PREFIX = "query: "
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local model directory; never reach for the hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
MIN_COS = 0.999


def load_texts(path, n):
    texts = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            texts.append(json.loads(line)["text"])
            if len(texts) == n:
                break
    if len(texts) < n:
        sys.exit(f"{path}: only {len(texts)} texts, {n} asked")
    return [PREFIX + t for t in texts]


def st_model(model_dir, threads):
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    return SentenceTransformer(model_dir, device="cpu")


def read_texts_file(path):
    """One text per line (scripts/bench-embed.sh gives every contender the same file)."""
    with open(path, encoding="utf-8") as f:
        return [PREFIX + line.rstrip("\n") for line in f if line.strip()]


def bench(args):
    texts = read_texts_file(args.texts_file) if args.texts_file else load_texts(args.data, args.texts)
    model = st_model(args.model, args.threads)
    model.encode(texts[: args.batch], batch_size=args.batch, show_progress_bar=False)  # warm-up
    started = time.perf_counter()
    vectors = model.encode(texts, batch_size=args.batch, show_progress_bar=False)
    elapsed = time.perf_counter() - started
    dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    assert vectors.shape == (len(texts), dim())
    print(f"st_sent_s={len(texts) / elapsed:.1f} texts={len(texts)} batch={args.batch} threads={args.threads}")


def onnx_embed(args):
    """Runs in venv-model: the ONNX export as check_korsts.py runs it, vectors to --out."""
    sys.path.insert(0, HERE)
    from onnx_reference import OnnxEmbedder

    vectors, enc = OnnxEmbedder(args.onnx_embed, args.threads).embed(load_texts(args.data, args.check_texts))
    np.save(args.out, vectors)
    with open(args.out + ".ids.json", "w") as f:
        json.dump([e.ids for e in enc], f)


def check_onnx(args):
    texts = load_texts(args.data, args.check_texts)
    model = st_model(args.model, args.threads)
    st = model.encode(texts, batch_size=args.batch, show_progress_bar=False, normalize_embeddings=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "onnx.npy")
        subprocess.run([args.onnx_python, os.path.abspath(__file__), "--onnx-embed", args.check_onnx,
                        "--out", out, "--data", args.data, "--check-texts", str(args.check_texts),
                        "--threads", str(args.threads)], check=True)
        ref = np.load(out)
        ref_ids = json.load(open(out + ".ids.json"))
    same_ids = [model.tokenizer(t)["input_ids"] for t in texts] == ref_ids
    cos = (st * ref).sum(1)
    print(f"check_onnx min_cos={cos.min():.6f} mean_cos={cos.mean():.6f} texts={len(texts)} same_token_ids={same_ids}")
    if cos.min() < MIN_COS:
        sys.exit(f"sentence-transformers vectors differ from the ONNX model (min cosine {cos.min():.6f} < {MIN_COS})")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model directory written by export_e5_hf.py")
    p.add_argument("--texts", type=int, default=2000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--texts-file", help="one text per line, instead of --data/--texts")
    p.add_argument("--check-onnx", metavar="DIR", help="compare with DIR/model.onnx through onnxruntime")
    p.add_argument("--check-texts", type=int, default=20)
    p.add_argument("--onnx-python", default=os.path.join(CACHE, "venv-model/bin/python"))
    p.add_argument("--onnx-embed", metavar="DIR", help=argparse.SUPPRESS)  # child side of --check-onnx
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.onnx_embed:
        onnx_embed(args)
    elif not args.model:
        p.error("--model is required")
    elif args.check_onnx:
        check_onnx(args)
    else:
        bench(args)


if __name__ == "__main__":
    main()
