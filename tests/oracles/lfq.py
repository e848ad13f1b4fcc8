"""Lookup-free quantization (MAGVIT-v2) in numpy, written from the paper and lucidrains' LFQ
definitions rather than from vqlab:

  bits: b_i = z_i > 0; q = 2b - 1; code = sum_i b_i 2^(d-1-i) (first channel most significant)
  commitment = mean((z - q)^2)
  p_n = softmax_k(2 z_n . c_k / tau) over the K = 2^d codes c_k in {-1, 1}^d
  entropy = mean_n H(p_n) - H'(mean_n p_n), with the exact H(p) = -sum p ln p (0 ln 0 = 0)
  per sample and lucidrains' clamped H'(p) = -sum p ln max(p, 1e-5) for the batch mean.
  Both over the full N x K matrix of p_n, the direct form of the definition.
  loss = beta * commitment + weight * entropy + sum(q_st * g), with q_st = q forward and the
  identity backward (straight-through).

The gradient of the loss with respect to z is computed by central finite differences of the
float64 loss (h = 1e-5), with the signs held fixed (they are piecewise constant), plus the
straight-through term g. Reads {"z", "g", "beta", "weight", "tau"} from argv[1].
"""
import json
import sys

import numpy as np

spec = json.load(open(sys.argv[1]))
z = np.array(spec["z"], dtype=np.float64)
g = np.array(spec["g"], dtype=np.float64)
beta, weight, tau = spec["beta"], spec["weight"], spec["tau"]
n, d = z.shape
K = 2 ** d
codebook = np.array([[1.0 if (k >> (d - 1 - i)) & 1 else -1.0 for i in range(d)] for k in range(K)])
bits = (z > 0).astype(np.float64)
q = 2 * bits - 1
codes = (bits * (2.0 ** np.arange(d - 1, -1, -1))).sum(1)


def entropy_rows(p):
    return -(p * np.log(np.maximum(p, 1e-5))).sum(-1)


def exact_entropy_rows(p):
    return -np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(-1)


def aux(zz):
    logits = 2 * zz @ codebook.T / tau
    logits -= logits.max(1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(1, keepdims=True)
    ent = exact_entropy_rows(p).mean() - entropy_rows(p.mean(0))
    commit = ((zz - q) ** 2).mean()
    return beta * commit + weight * ent, commit, ent


_, commit, ent = aux(z)
grad = np.zeros_like(z)
h = 1e-5
for i in range(n):
    for j in range(d):
        zp, zm = z.copy(), z.copy()
        zp[i, j] += h
        zm[i, j] -= h
        grad[i, j] = (aux(zp)[0] - aux(zm)[0]) / (2 * h)
grad += g
print(json.dumps({"q": q.tolist(), "codes": [int(c) for c in codes], "commit": commit, "entropy": ent, "grad": grad.tolist()}))
