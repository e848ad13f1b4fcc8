"""Perplexity, usage and dead codes of code counts, with numpy (docs/design.md, "Metrics").
Reads JSON [[n_0, n_1, ...], ...] from argv[1]; prints [[perplexity, usage, dead], ...]."""
import json
import sys

import numpy as np

out = []
for counts in json.load(open(sys.argv[1])):
    n = np.asarray(counts, dtype=np.float64)
    p = n / n.sum()
    nz = p[p > 0]
    out.append([float(np.exp(-(nz * np.log(nz)).sum())), float((n > 0).mean()), int((n == 0).sum())])
print(json.dumps(out))
