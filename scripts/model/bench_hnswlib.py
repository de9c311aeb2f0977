"""hnswlib (PyPI) on the same vectors as bench_vectors: build time, memory, and recall@10 and
single-query QPS (one thread) over the same sweep of ef, against exact search.

usage: bench_hnswlib.py DIR [QUERIES] [K]   (the last QUERIES vectors are the queries)
Prints `hnswlib ef=... recall10=... qps=...` lines and `hnswlib build_s=... rss_mb=...`.
"""
import json
import resource
import sys
import time

import hnswlib
import numpy as np

directory = sys.argv[1]
queries = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
k = int(sys.argv[3]) if len(sys.argv) > 3 else 10
count = sum(1 for _ in open(f"{directory}/meta.jsonl", encoding="utf-8"))
vectors = np.fromfile(f"{directory}/vectors.f32", dtype="<f4").reshape(count, -1)
n = count - queries
data, query = vectors[:n], vectors[n:]

# Exact top-k by cosine (the vectors are normalised, so by dot product), in blocks.
norms = np.linalg.norm(data, axis=1)
truth = []
for q in query:
    scores = (data @ q) / (norms * np.linalg.norm(q) + 1e-12)
    top = np.argpartition(-scores, k)[:k]
    truth.append(set(top[np.argsort(-scores[top])].tolist()))

rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
index = hnswlib.Index(space="cosine", dim=data.shape[1])
started = time.perf_counter()
index.init_index(max_elements=n, ef_construction=128, M=16)
index.add_items(data, np.arange(n))
build = time.perf_counter() - started
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"hnswlib build_s={build:.1f} rss_mb={rss:.0f} index_rss_mb={rss - rss_before:.0f} n={n}")
index.set_num_threads(1)
for ef in [10, 16, 24, 32, 48, 64, 96, 128, 192, 256]:
    ef = max(ef, k)
    index.set_ef(ef)
    hits = 0
    started = time.perf_counter()
    for q, want in zip(query, truth):
        labels, _ = index.knn_query(q, k=k)
        hits += len(want.intersection(labels[0].tolist()))
    seconds = time.perf_counter() - started
    print(f"hnswlib ef={ef} recall10={hits / (queries * k):.4f} qps={queries / seconds:.0f}")
