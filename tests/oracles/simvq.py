"""SimVQ (Zhu et al. 2024) in numpy, written from the paper rather than from vqlab: the codes
are a frozen basis C (K, D) times a learned map, E = C W^T; each latent z takes its nearest
code q = E[k] (squared Euclidean); the codebook loss mean((q - sg[z])^2) trains W only, with
dL/dW[i, j] = 2/(N D) * sum_n (q_n[i] - z_n[i]) * C[k_n][j]; C gets no gradient.

Reads {"z", "basis", "w"} from argv[1]; prints {"codes", "q", "codebook_loss", "grad_w"}.
"""
import json
import sys

import numpy as np

spec = json.load(open(sys.argv[1]))
z = np.array(spec["z"], dtype=np.float64)
C = np.array(spec["basis"], dtype=np.float64)
W = np.array(spec["w"], dtype=np.float64)
E = C @ W.T
codes = ((z[:, None, :] - E[None, :, :]) ** 2).sum(-1).argmin(1)
q = E[codes]
n, d = z.shape
loss = ((q - z) ** 2).mean()
grad_w = 2.0 / (n * d) * (q - z).T @ C[codes]
print(json.dumps({"codes": [int(c) for c in codes], "q": q.tolist(), "codebook_loss": loss, "grad_w": grad_w.tolist()}))
