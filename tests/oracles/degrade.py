"""The super-resolution task's input, computed with numpy and PIL rather than with vqlab:
the mean of each s x s block (numpy reshape), then PIL's own bicubic resize back to the full
size (Image.resize(..., BICUBIC) on a float 'F' image), clipped to [0, 1]. Reads
{"x": [images, each rows of pixels], "scale": s} from argv[1]; prints {"y": [...]}.
"""
import json
import sys

import numpy as np
from PIL import Image

spec = json.load(open(sys.argv[1]))
x = np.array(spec["x"], dtype=np.float64)
s = spec["scale"]
n, h, w = x.shape
small = x.reshape(n, h // s, s, w // s, s).mean((2, 4))
up = np.stack([
    np.asarray(Image.fromarray(im.astype(np.float32), mode="F").resize((w, h), Image.Resampling.BICUBIC))
    for im in small
])
print(json.dumps({"y": np.clip(up, 0.0, 1.0).tolist()}))
