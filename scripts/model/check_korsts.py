"""Checks an exported embedding model straight through onnxruntime (no moa): Spearman x100 of cosine
similarity vs gold on a KorSTS-format file, with the model's moa.json (prefix, pooling, normalise).
It verifies the export itself; scripts/eval-korsts.sh measures the running service.

usage: python check_korsts.py MODEL_DIR [KORSTS.tsv]
"""
import csv
import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort
from scipy.stats import spearmanr
from tokenizers import Tokenizer

model_dir = sys.argv[1]
data = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(__file__), "../../../shared/data/korsts-dev.tsv")
config = json.load(open(os.path.join(model_dir, "moa.json")))
tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
tok.no_padding()
tok.no_truncation()
options = ort.SessionOptions()
options.intra_op_num_threads = os.cpu_count() or 1
session = ort.InferenceSession(os.path.join(model_dir, "model.onnx"), options, providers=["CPUExecutionProvider"])
prefix = config.get("query_prefix", "")


def embed(texts):
    enc = tok.encode_batch([prefix + t for t in texts])
    width = max(len(e.ids) for e in enc)
    ids = np.zeros((len(enc), width), np.int64)
    mask = np.zeros((len(enc), width), np.int64)
    for i, e in enumerate(enc):
        ids[i, : len(e.ids)] = e.ids
        mask[i, : len(e.ids)] = 1
    hidden = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    if config["pooling"] == "cls":
        vectors = hidden[:, 0]
    else:
        vectors = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    if config.get("normalize", True):
        vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


rows = list(csv.reader(open(data, encoding="utf-8"), delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
gold = [float(r[4]) for r in rows]
started, sims = time.time(), []
for i in range(0, len(rows), 32):
    a, b = embed([r[5] for r in rows[i : i + 32]]), embed([r[6] for r in rows[i : i + 32]])
    sims.extend((a * b).sum(1))
print(
    f"RESULT korsts-export model={config['model_id']} spearman={spearmanr(gold, sims).correlation * 100:.2f} "
    f"pairs={len(rows)} sent_s={2 * len(rows) / (time.time() - started):.0f}"
)
