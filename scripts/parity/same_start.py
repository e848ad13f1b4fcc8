"""Same start, same images: vqlab's VQ-VAE training step against the PyTorch twin's
(scripts/parity/torch_vqvae.py), deterministically, for scripts/parity_vs_pytorch.sh.

vqlab trains the vq arm of experiments/parity.toml on 64 training images (one batch, so every
step sees all of them and the batch order cannot matter) for 1 step and, with the same seed,
for N steps logging every step. From the 1-step checkpoint this script recovers

- the first gradient, g = m / (1 − β1) (Adam's first moment after one step), and
- the initial weights, θ0 = θ1 + lr / (1 − β1) · m / (√v / √(1 − β2) + ε) (Adam's first
  update, PyTorch's form, undone in float64),

loads θ0 into the twin's model name by name, computes the twin's gradient of the same loss on
the same images, and trains the twin N steps from θ0 with torch.optim.Adam.

Checks (exit 1 if one fails): every parameter's gradient agrees with vqlab's to `--grad-tol`
relative (L2 norm of the difference over the norm of the twin's), and the training
reconstruction loss of each of the N steps agrees to `--loss-tol` relative. Two float32
implementations of the same math agree to ~1e-6 until a latent vector's nearest code flips
between two near-equal codes; after that the runs drift apart (that is what seeds do), so N
is kept short.

    python same_start.py --one RUN_DIR_1_STEP --many RUN_DIR_N_STEPS [--data DIR]
"""

import argparse
import os
import sys
import tomllib

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_vqvae as twin  # noqa: E402


def vqlab_name(name):
    """The twin's parameter name → vqlab's (src/model/autoencoder.rs, quantizer.rs)."""
    if name == "codebook":
        return "quantizer.codebook"
    prefix, rest = name.split(".", 1)
    layers = {"e1": "encoder.down0", "e2": "encoder.down1", "e3": "encoder.conv3", "pre": "encoder.pre_vq",
              "d1": "decoder.conv_in", "d2": "decoder.up0", "d3": "decoder.up1"}
    if prefix in layers:
        return f"{layers[prefix]}.{rest}"
    # e_res.blocks.<i>.<0|1>.<weight|bias>: 0 is the block's 3×3 conv, 1 its 1×1 conv.
    stack = {"e_res": "encoder.res", "d_res": "decoder.res"}[prefix]
    _, i, j, kind = rest.split(".")
    return f"{stack}.{i}.{('conv3', 'conv1')[int(j)]}.{kind}"


def exact_nearest(f, e):
    """The nearest code in float64, by vqlab's score ‖e‖²/2 − z·e (the same argmin as the
    twin's torch.cdist). At the random initial codebook (codes ~1/K in size) a few of the 3,136
    latent vectors of a batch are a relative 1e-7 from a tie between two codes; cdist's float32
    ‖z‖² − 2z·e + ‖e‖² rounds at the scale of ‖z‖² and picks either code from one call to the
    next, which moves the gradient of the decoder's first layer by percents. In float64 the twin
    takes the exact nearest code, as vqlab's float32 score (no ‖z‖² term) does at these gaps."""
    f, e = f.double(), e.double()
    return ((e * e).sum(1) / 2 - f @ e.t()).argmin(1)


def train_losses(run_dir):
    rows = pq.read_table(os.path.join(run_dir, "metrics.parquet")).to_pylist()
    return {r["step"]: r["value"] for r in rows if r["split"] == "train" and r["metric"] == "rec_loss"}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--one", required=True, help="vqlab run dir after 1 step")
    p.add_argument("--many", required=True, help="vqlab run dir after N steps (log_every = 1)")
    p.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--grad-tol", type=float, default=1e-4)
    p.add_argument("--loss-tol", type=float, default=1e-4)
    a = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    twin.nearest = exact_nearest

    with open(os.path.join(a.one, "config.toml"), "rb") as f:
        cfg = tomllib.load(f)
    q, m, t = cfg["quantizer"], cfg["model"], cfg["train"]
    lc = cfg["loss"]
    if (q["kind"], m["variant"], m["downsample"], lc["recon"], lc["codebook_weight"]) != ("vq", "vqvae", 2, "mse", 1.0):
        sys.exit(f"error: {a.one} is not the twin's model (a vq VQ-VAE, downsample 2, mse, codebook weight 1)")
    if t["steps"] != 1 or cfg["data"]["train_images"] != 64:
        sys.exit(f"error: {a.one} is not a 1-step run on 64 training images")
    with open(os.path.join(a.many, "config.toml"), "rb") as f:
        many = tomllib.load(f)
    for c in (cfg, many):
        c["train"].pop("steps")
    if many != cfg:
        sys.exit(f"error: {a.many} is not the run of {a.one} trained for more steps")
    ck = load_file(os.path.join(a.one, "checkpoints", "last.safetensors"))
    lr, (b1, b2), eps = t["lr"], t["betas"], 1e-8  # vqlab's Adam has PyTorch's ε (src/nn/optim.rs)
    k, d = ck["model.quantizer.codebook"].shape
    ae = twin.Autoencoder(m["hidden_channels"], m["res_channels"], m["res_blocks"], d)
    vq = twin.VQ(k, d, q["beta"])
    named = list(ae.named_parameters()) + [("codebook", vq.codebook)]
    covered = {vqlab_name(n) for n, _ in named}
    extra = sorted(n[len("model."):] for n in ck if n.startswith("model.") and n[len("model."):] not in covered)
    if extra:
        sys.exit(f"error: vqlab parameters the twin lacks: {extra}")
    g_vqlab, theta0 = {}, {}
    with torch.no_grad():
        for n, param in named:
            v = vqlab_name(n)
            keys = [f"{pre}{v}" for pre in ("model.", "opt_g.m.", "opt_g.v.")]
            if any(key not in ck for key in keys):
                sys.exit(f"error: the checkpoint of {a.one} lacks one of {keys}")
            th1, mom1, mom2 = (ck[key].astype(np.float64) for key in keys)
            th0 = th1 + lr / (1 - b1) * mom1 / (np.sqrt(mom2) / np.sqrt(1 - b2) + eps)
            if th0.shape != tuple(param.shape):
                sys.exit(f"error: {v} has shape {th0.shape} in vqlab, {tuple(param.shape)} in the twin")
            theta0[n] = torch.from_numpy(th0.astype(np.float32))
            param.copy_(theta0[n])
            g_vqlab[n] = mom1 / (1 - b1)

    images = twin.read_idx_images(f"{a.data}/train-images-idx3-ubyte.gz")[:64]
    x = torch.from_numpy(images.astype(np.float32) / 255.0)

    def loss(x):
        zq, q_loss, _ = vq(ae.encode(x))
        rec = F.mse_loss(ae.decode(zq), x)
        return rec + q_loss, rec

    failed = 0
    total, _ = loss(x)
    total.backward()
    worst, worst_name = 0.0, ""
    for n, param in named:
        gt = param.grad.double().numpy()
        rel = np.linalg.norm(gt - g_vqlab[n]) / max(np.linalg.norm(gt), 1e-30)
        if rel > worst:
            worst, worst_name = rel, n
    ok = worst <= a.grad_tol
    failed += not ok
    print(f"first gradient, {len(named)} tensors: worst relative difference {worst:.2e} ({vqlab_name(worst_name)})"
          f" {'PASS' if ok else 'FAIL'}")

    curve = train_losses(a.many)
    steps = max(curve)
    with torch.no_grad():
        for n, param in named:
            param.copy_(theta0[n])
    params = [param for _, param in named]
    opt = torch.optim.Adam(params, lr=lr, betas=(b1, b2), eps=eps)
    worst_step, worst = 0, 0.0
    for step in range(1, steps + 1):
        total, rec = loss(x)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        if step not in curve:
            sys.exit(f"error: {a.many} has no train/rec_loss at step {step} (log_every must be 1)")
        rel = abs(rec.item() - curve[step]) / abs(curve[step])
        if rel >= worst:
            worst_step, worst = step, rel
    ok = worst <= a.loss_tol
    failed += not ok
    print(f"training loss, steps 1–{steps}: worst relative difference {worst:.2e} (step {worst_step})"
          f" {'PASS' if ok else 'FAIL'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
