"""k-means codebook init followed by EMA codebook updates, in numpy, written from the
references rather than from vqlab:

- Lloyd's k-means from given seed rows: assign each row to the nearest centroid (squared
  Euclidean, ties to the lowest index), move each centroid to the mean of its rows, keep the
  old centroid of an empty cluster; `iters` rounds, then the cluster sizes of a last assignment.
- The EMA statistics start as those clusters (lucidrains' init_embed_: cluster_size = k-means
  counts, embed_avg = centroid * count), with the counts rescaled to `per_batch` vectors in all
  and an empty cluster counted as one vector. A seeded average needs no zero-debiasing.
- Then Sonnet's VectorQuantizerEMA update per batch: hidden -= (hidden - value) * (1 - decay);
  average = hidden / (1 - decay^t) (here: decay^t = 0, the seed is an average);
  n = sum(cluster sizes); smoothed = (size + eps) / (n + K eps) * n; codebook = dw / smoothed.
  With "seeded": false the statistics start at zero with decay^0 = 1, as Sonnet's do.

Reads a JSON spec from argv[1]; prints the centroids, counts, codebooks after each batch and
the batches' code assignments as JSON.
"""
import json
import sys

import numpy as np


def nearest(x, codebook):
    d = ((x[:, None, :] - codebook[None, :, :]) ** 2).sum(-1)
    return d.argmin(1)


spec = json.load(open(sys.argv[1]))
k = spec["k"]
decay, eps = spec["decay"], spec["eps"]
out = {}
if "x" in spec:
    x = np.asarray(spec["x"], dtype=np.float64)
    c = x[spec["seed_rows"]].copy()
    for _ in range(spec["iters"]):
        a = nearest(x, c)
        for j in range(k):
            members = x[a == j]
            if len(members):
                c[j] = members.mean(0)
    counts = np.bincount(nearest(x, c), minlength=k).astype(np.float64)
else:
    c = np.asarray(spec["centroids"], dtype=np.float64)
    counts = np.asarray(spec["counts"], dtype=np.float64)
out["centroids"] = c.tolist()
out["counts"] = counts.tolist()

codebook = c.copy()
if spec.get("seeded", True):
    size = np.maximum(counts, 1.0)
    size = size * spec["per_batch"] / size.sum()
    hidden_cs, hidden_dw, power = size.copy(), c * size[:, None], 0.0
else:
    hidden_cs, hidden_dw, power = np.zeros(k), np.zeros_like(c), 1.0

codebooks, assignments = [], []
for batch in spec["batches"]:
    b = np.asarray(batch, dtype=np.float64)
    a = nearest(b, codebook)
    n_k = np.bincount(a, minlength=k).astype(np.float64)
    sums = np.zeros_like(codebook)
    np.add.at(sums, a, b)
    hidden_cs -= (hidden_cs - n_k) * (1 - decay)
    hidden_dw -= (hidden_dw - sums) * (1 - decay)
    power *= decay
    avg_cs = hidden_cs / (1 - power)
    avg_dw = hidden_dw / (1 - power)
    n = avg_cs.sum()
    smoothed = (avg_cs + eps) / (n + k * eps) * n
    codebook = avg_dw / smoothed[:, None]
    codebooks.append(codebook.tolist())
    assignments.append(a.tolist())
out["codebooks"] = codebooks
out["assignments"] = assignments
print(json.dumps(out))
