"""Entropy in bits of the marginal distribution of the codes in a prior run's
codes.safetensors, read with numpy from the safetensors layout (an 8-byte little-endian
header length, a JSON header of dtype/shape/offsets, then the raw data), not through vqlab.
Prints {split: {"entropy_bits", "count", "codes_used"}} for train, val and test."""
import json
import struct
import sys

import numpy as np

raw = open(sys.argv[1], "rb").read()
(n,) = struct.unpack("<Q", raw[:8])
header = json.loads(raw[8 : 8 + n])
data = raw[8 + n :]
out = {}
for split in ("train", "val", "test"):
    h = header[split]
    assert h["dtype"] == "U32", h
    lo, hi = h["data_offsets"]
    codes = np.frombuffer(data[lo:hi], dtype="<u4").reshape(h["shape"])
    _, counts = np.unique(codes, return_counts=True)
    p = counts / counts.sum()
    out[split] = {"entropy_bits": float(-(p * np.log2(p)).sum()), "count": int(codes.shape[0]), "codes_used": int(len(counts))}
print(json.dumps(out))
