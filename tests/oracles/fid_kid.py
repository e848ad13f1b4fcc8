"""Independent FID and KID: pytorch-fid's recipe with scipy.linalg.sqrtm, and a direct numpy
unbiased MMD² with the kernel (x·y/d + 1)³ on the subsets the caller gives.
Reads a JSON file {d, x, y, subsets: [[ix, iy], …]} (x and y flat, row-major); prints JSON."""
import json
import sys

import numpy as np
from scipy import linalg


def frechet(x, y, eps=1e-6):
    mu1, mu2 = x.mean(axis=0), y.mean(axis=0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    diff = mu1 - mu2
    covmean, _ = linalg.sqrtm(s1.dot(s2), disp=False)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + offset).dot(s2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def mmd2(x, y):
    d = x.shape[1]
    m, n = len(x), len(y)
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    return (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean()


spec = json.load(open(sys.argv[1]))
d = spec["d"]
x = np.array(spec["x"], dtype=np.float64).reshape(-1, d)
y = np.array(spec["y"], dtype=np.float64).reshape(-1, d)
mmds = [mmd2(x[ix], y[iy]) for ix, iy in spec["subsets"]]
print(json.dumps({"fid": frechet(x, y), "kid_mean": float(np.mean(mmds)), "kid_std": float(np.std(mmds))}))
