"""The rotation trick (Fifty et al. 2024) in numpy, written from the paper's definition with
explicit matrices rather than from vqlab's efficient form:

  q = the nearest codebook row to e (squared Euclidean);
  u = e/|e|, qh = q/|q|, r = (u + qh)/|u + qh|;
  R = I - 2 r r^T + 2 qh u^T  (the rotation taking u to qh);  lambda = |q|/|e|;
  forward value lambda R e = q; the gradient of sum(w * out) with respect to e, with R and
  lambda held constant, is lambda R^T w.

Reads {"e": rows, "codebook": rows, "w": rows} from argv[1]; prints {"out", "codes", "grad",
"rotation_is_orthogonal"}.
"""
import json
import sys

import numpy as np

spec = json.load(open(sys.argv[1]))
e = np.array(spec["e"], dtype=np.float64)
cb = np.array(spec["codebook"], dtype=np.float64)
w = np.array(spec["w"], dtype=np.float64)
codes = ((e[:, None, :] - cb[None, :, :]) ** 2).sum(-1).argmin(1)
out, grad, ortho = [], [], True
d = e.shape[1]
for i, k in enumerate(codes):
    q = cb[k]
    u = e[i] / np.linalg.norm(e[i])
    qh = q / np.linalg.norm(q)
    r = (u + qh) / np.linalg.norm(u + qh)
    R = np.eye(d) - 2 * np.outer(r, r) + 2 * np.outer(qh, u)
    lam = np.linalg.norm(q) / np.linalg.norm(e[i])
    ortho = ortho and np.allclose(R.T @ R, np.eye(d), atol=1e-9)
    out.append((lam * R @ e[i]).tolist())
    grad.append((lam * R.T @ w[i]).tolist())
print(json.dumps({"out": out, "codes": [int(c) for c in codes], "grad": grad, "rotation_is_orthogonal": bool(ortho)}))
