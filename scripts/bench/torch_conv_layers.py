"""The PyTorch side of scripts/bench_conv_layers.sh: the convolution layers of
benches/conv_layers.rs (the shapes of experiments/bench_step.toml, batch 128), each timed
alone, forward and forward + backward (input and weight gradients of sum(y)), the median of
--reps repetitions after one untimed one. Prints one JSON object a line."""

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

LAYERS = [
    ("enc1 4x4/2 1->64", False, (128, 1, 28, 28), (64, 1, 4, 4), 2, 1),
    ("enc2 4x4/2 64->128", False, (128, 64, 14, 14), (128, 64, 4, 4), 2, 1),
    ("enc3 3x3 128->128", False, (128, 128, 7, 7), (128, 128, 3, 3), 1, 1),
    ("res 3x3 128->32", False, (128, 128, 7, 7), (32, 128, 3, 3), 1, 1),
    ("res 1x1 32->128", False, (128, 32, 7, 7), (128, 32, 1, 1), 1, 0),
    ("dec1 3x3 64->128", False, (128, 64, 7, 7), (128, 64, 3, 3), 1, 1),
    ("up0 T4x4/2 128->64", True, (128, 128, 7, 7), (128, 64, 4, 4), 2, 1),
    ("up1 T4x4/2 64->1", True, (128, 64, 14, 14), (64, 1, 4, 4), 2, 1),
    ("disc2 4x4/1 128->256", False, (128, 128, 7, 7), (256, 128, 4, 4), 1, 1),
    ("disc3 4x4/1 256->1", False, (128, 256, 6, 6), (1, 256, 4, 4), 1, 1),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    for name, transpose, xd, wd, stride, pad in LAYERS:
        x = torch.randn(*xd, requires_grad=True)
        w = (torch.randn(*wd) * 0.05).requires_grad_(True)
        conv = F.conv_transpose2d if transpose else F.conv2d
        fwd, both = [], []
        for rep in range(a.reps + 1):
            t0 = time.perf_counter()
            with torch.no_grad():
                conv(x, w, None, stride, pad)
            t1 = time.perf_counter() - t0
            t0 = time.perf_counter()
            conv(x, w, None, stride, pad).sum().backward()
            t2 = time.perf_counter() - t0
            assert x.grad is not None and w.grad is not None
            x.grad = w.grad = None
            if rep > 0:
                fwd.append(t1 * 1e3)
                both.append(t2 * 1e3)
        print(json.dumps({"layer": name, "fwd_ms": statistics.median(fwd), "fwd_bwd_ms": statistics.median(both)}))


if __name__ == "__main__":
    main()
