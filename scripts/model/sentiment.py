"""Sentiment classifier for reviews: logistic regression over hashed character n-grams and words
of the cleaned text plus the passage embedding the review job stores.

  sentiment.py train DIR MODEL.json    train on DIR (vectors.f32 + meta.jsonl from embed_reviews),
                                       stores not held out; writes MODEL.json
  sentiment.py eval DIR MODEL.json [--all]
                                       accuracy on DIR's held-out stores (all rows with --all);
                                       prints RESULT sentiment accuracy=... n=...

Labels: rating 1-4 negative (0), 9-10 positive (1). A store is held out when md5(store_id) % 5 == 0,
so training never sees the stores the evaluation uses. Training is L-BFGS on the L2-penalised log
loss from zero: deterministic, so the model is reproducible from the shared data.

Features (review-text's `sentiment_features` computes the same in the component): the text padded
with a space on each side; every 1-, 2- and 3-character window as "n:window" and every
whitespace-separated word as "w:word", each hashed with 64-bit FNV-1a over its UTF-8 bytes modulo
2^BITS; the set of distinct buckets, each valued 1/sqrt(count); then the embedding's values.
"""
import hashlib
import json
import sys

import numpy as np
import scipy.sparse as sp
from scipy.optimize import minimize

BITS = 18
L2 = 0.3
MAX_ITERATIONS = 400
KEEP = 1e-4  # weights smaller than this are left out of the file


def fnv1a(text):
    h = 0xCBF29CE484222325
    for byte in text.encode("utf-8"):
        h ^= byte
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def buckets(text):
    padded = " " + text + " "
    found = set()
    for n in (1, 2, 3):
        for i in range(len(padded) - n + 1):
            found.add(fnv1a(f"{n}:{padded[i:i + n]}") % (1 << BITS))
    for word in text.split():
        found.add(fnv1a("w:" + word) % (1 << BITS))
    return sorted(found)


def held_out(store_id):
    return int(hashlib.md5(store_id.encode()).hexdigest(), 16) % 5 == 0


def load(directory):
    meta = [json.loads(line) for line in open(f"{directory}/meta.jsonl", encoding="utf-8")]
    vectors = np.fromfile(f"{directory}/vectors.f32", dtype="<f4").reshape(len(meta), -1)
    keep = [i for i, m in enumerate(meta) if m["rating"] <= 4 or m["rating"] >= 9]
    meta = [meta[i] for i in keep]
    rows, cols, values = [], [], []
    for row, m in enumerate(meta):
        found = buckets(m["text"])
        for bucket in found:
            rows.append(row)
            cols.append(bucket)
            values.append(1.0 / np.sqrt(len(found)))
    grams = sp.csr_matrix((values, (rows, cols)), shape=(len(meta), 1 << BITS))
    x = sp.hstack([grams, sp.csr_matrix(vectors[keep].astype(np.float64))]).tocsr()
    y = np.array([1.0 if m["rating"] >= 9 else 0.0 for m in meta])
    heldout = np.array([held_out(str(m["store_id"])) for m in meta])
    return x, y, heldout, vectors.shape[1]


def train(x, y):
    d = x.shape[1]

    def loss(w):
        z = x @ w[:d] + w[d]
        p = 1.0 / (1.0 + np.exp(-z))
        value = -np.sum(y * np.log(p + 1e-12) + (1 - y) * np.log(1 - p + 1e-12))
        value += 0.5 * L2 * np.dot(w[:d], w[:d])
        gradient = np.concatenate([x.T @ (p - y) + L2 * w[:d], [np.sum(p - y)]])
        return value, gradient

    result = minimize(loss, np.zeros(d + 1), jac=True, method="L-BFGS-B",
                      options={"maxiter": MAX_ITERATIONS})
    return result.x[:d], result.x[d]


def accuracy(x, y, weights, bias):
    return float(np.mean(((x @ weights + bias) >= 0) == (y == 1.0)))


def model_weights(model, dimensions):
    weights = np.zeros((1 << model["ngram_bits"]) + dimensions)
    for bucket, weight in model["ngram_weights"]:
        weights[bucket] = weight
    weights[1 << model["ngram_bits"]:] = model["embedding_weights"]
    return weights


def main():
    if len(sys.argv) < 4 or sys.argv[1] not in ("train", "eval"):
        sys.exit(__doc__)
    command, directory, model_path = sys.argv[1:4]
    x, y, heldout, dimensions = load(directory)
    if command == "train":
        weights, bias = train(x[~heldout], y[~heldout])
        grams = weights[: 1 << BITS]
        kept = [[int(i), round(float(grams[i]), 5)] for i in np.nonzero(np.abs(grams) >= KEEP)[0]]
        model = {
            "model": "logistic regression over hashed char 1-3-grams and words (FNV-1a) "
                     "+ multilingual-e5-small passage embeddings",
            "labels": "1 = positive (ratings 9-10), 0 = negative (ratings 1-4)",
            "trained_on": int(np.sum(~heldout)),
            "l2": L2,
            "ngram_bits": BITS,
            "ngram_weights": kept,
            "embedding_weights": [round(float(v), 6) for v in weights[1 << BITS:]],
            "bias": round(float(bias), 6),
        }
        with open(model_path, "w", encoding="utf-8") as out:
            json.dump(model, out, separators=(",", ":"))
        rounded = model_weights(model, dimensions)
        print(f"trained on {model['trained_on']} reviews; {len(kept)} n-gram weights kept; "
              f"train accuracy {accuracy(x[~heldout], y[~heldout], rounded, model['bias']):.4f} "
              f"-> {model_path}")
        return
    model = json.load(open(model_path, encoding="utf-8"))
    if model.get("ngram_bits") != BITS:
        sys.exit(f"{model_path} was trained with other features; run with TRAIN=1")
    weights = model_weights(model, dimensions)
    rows = np.ones_like(heldout) if "--all" in sys.argv else heldout
    print(f"RESULT sentiment accuracy={accuracy(x[rows], y[rows], weights, model['bias']):.4f} "
          f"n={int(np.sum(rows))}")


if __name__ == "__main__":
    main()
