"""Residual vector quantization (SoundStream's Algorithm 1) in numpy, written from the paper
and audiocraft's ResidualVectorQuantization rather than from vqlab:

  r_0 = z;  k_l = argmin_k |r_l - e_lk|^2;  q_l = e_l[k_l];  r_{l+1} = r_l - q_l
  output = sum_l q_l, with the straight-through estimator from the sum to z
  codebook loss = sum_l mean((q_l - sg[r_l])^2);  commitment = sum_l mean((r_l - sg[q_l])^2)
  loss = beta * commitment + w * codebook + sum(output * g)

r_l = z - sum_{j<l} q_j with the q_j held constant, so d r_l / d z is the identity:
  dL/dz = g + beta * sum_l 2 (r_l - q_l) / (N D)
  dL/de_l[k] = w * sum over rows i with k_l(i) = k of 2 (q_l(i) - r_l(i)) / (N D)
Reads {"z", "codebooks", "g", "beta", "w"} from argv[1].
"""
import json
import sys

import numpy as np

spec = json.load(open(sys.argv[1]))
z = np.array(spec["z"], dtype=np.float64)
g = np.array(spec["g"], dtype=np.float64)
books = [np.array(b, dtype=np.float64) for b in spec["codebooks"]]
beta, w = spec["beta"], spec["w"]
n, d = z.shape
r = z.copy()
out = np.zeros_like(z)
codes, cb_loss, commit = [], 0.0, 0.0
grad_z = g.copy()
grad_books = []
for e in books:
    dist = ((r[:, None, :] - e[None, :, :]) ** 2).sum(-1)
    k = dist.argmin(1)
    q = e[k]
    codes.append(k.tolist())
    cb_loss += ((q - r) ** 2).mean()
    commit += ((r - q) ** 2).mean()
    grad_z += beta * 2 * (r - q) / (n * d)
    ge = np.zeros_like(e)
    np.add.at(ge, k, w * 2 * (q - r) / (n * d))
    grad_books.append(ge.tolist())
    out += q
    r = r - q
print(json.dumps({"codes": codes, "out": out.tolist(), "codebook_loss": cb_loss, "commit": commit,
                  "grad_z": grad_z.tolist(), "grad_codebooks": grad_books}))
