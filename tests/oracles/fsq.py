"""Finite scalar quantization in numpy, written from the FSQ paper (Mentzer et al. 2023,
appendix A.1) rather than from vqlab, with vector-quantize-pytorch's corrections (atanh for
the paper's tan, 1 + eps for its 1 - eps):

  half_l = (L - 1)(1 + 1e-3) / 2, offset = 0.5 for even L else 0, shift = atanh(offset / half_l)
  bound(z) = tanh(z + shift) * half_l - offset;  q = round(bound(z)) / (L // 2)
  code = sum_i (round(bound(z))_i + L_i // 2) * prod_{j<i} L_j

and the straight-through gradient of sum(q * w) with respect to z:
  w * half_l * (1 - tanh(z + shift)^2) / (L // 2).

Reads a JSON spec {"levels": [...], "z": [[...], ...] (rows of len(levels)), "w": [[...]]}
from argv[1]; prints {"q", "codes", "grad"} as JSON.
"""
import json
import sys

import numpy as np

spec = json.load(open(sys.argv[1]))
levels = np.array(spec["levels"], dtype=np.float64)
z = np.array(spec["z"], dtype=np.float64)
w = np.array(spec["w"], dtype=np.float64)
half_l = (levels - 1) * (1 + 1e-3) / 2
offset = np.where(levels % 2 == 0, 0.5, 0.0)
shift = np.arctanh(offset / half_l)
t = np.tanh(z + shift)
bounded = t * half_l - offset
rounded = np.round(bounded)
half_width = np.floor(levels / 2)
q = rounded / half_width
basis = np.cumprod(np.concatenate([[1.0], levels[:-1]]))
codes = ((rounded + half_width) * basis).sum(1)
grad = w * half_l * (1 - t ** 2) / half_width
print(json.dumps({"q": q.tolist(), "codes": [int(c) for c in codes], "grad": grad.tolist()}))
