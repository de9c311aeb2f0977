"""Checks an exported embedding model straight through onnxruntime (no moa): Spearman x100 of cosine
similarity vs gold on a KorSTS-format file, with the model's moa.json (prefix, pooling, normalise).
It verifies the export itself; scripts/eval-korsts.sh measures the running service.

usage: python check_korsts.py MODEL_DIR [KORSTS.tsv]
"""
import csv
import os
import sys
import time

from onnx_reference import OnnxEmbedder
from scipy.stats import spearmanr

model_dir = sys.argv[1]
data = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(__file__), "../../../shared/data/korsts-dev.tsv")
model = OnnxEmbedder(model_dir)
config = model.config
prefix = config.get("query_prefix", "")


def embed(texts):
    return model.embed([prefix + t for t in texts])[0]


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
