"""An independent PyTorch VQ-VAE for scripts/parity_vs_pytorch.sh: the recipe of
experiments/parity.toml written from Sonnet's vqvae.py / vqvae_example and lucidrains'
vector_quantize_pytorch, sharing no code or random stream with vqlab.

- Data: Fashion-MNIST from the IDX files (gzip + numpy), pixels / 255. Training images: the
  first 55,000 of the training file (the last 5,000 are vqlab's validation split, held out
  here too). Eval: the first 10,000 test images.
- Model: Sonnet's encoder (relu(conv 4x4 s2) x2, relu(conv 3x3), residual stack of
  x + conv1x1(relu(conv3x3(relu(x)))) with a final relu, conv 1x1 to D) on x - 0.5; the
  decoder (conv 3x3, residual stack, relu(convT 4x4 s2), convT 4x4 s2) + 0.5. PyTorch's
  default init.
- Quantizer "vq": codebook uniform(-1/K, 1/K), nearest code, loss = mse(x_hat, x)
  + mse(e, sg z) + beta * mse(z, sg e), straight-through.
- Quantizer "ema": Sonnet's VectorQuantizerEMA (decay 0.99, eps 1e-5, Laplace smoothing),
  initialised by k-means on the encoder outputs of the first training batches (>= 20 vectors
  per code, <= 50 batches, 10 Lloyd iterations from K distinct rows); the EMA statistics start
  as those clusters (lucidrains' init_embed_), rescaled to one batch of vectors, empty
  clusters counted as one vector, no zero-debiasing of a seeded average.
- Quantizers "fsq" and "lfq": vector-quantize-pytorch's own `FSQ` (the FSQ paper's levels
  for K) and `LFQ` (entropy weight 0.1, commitment 0.25, its default inv_temperature 100),
  imported from the installed package (`pip install vector-quantize-pytorch`): the
  reference implementations themselves, for calibrating vqlab's kinds of the same names.
- Adam (0.9, 0.999), lr 1e-3, batch 64, 625 steps, a fresh permutation each epoch.

Prints one JSON object: eval rec MSE (clamped reconstructions), PSNR, usage and perplexity
over all latent vectors of the eval images, and the wall time.
"""

import argparse
import gzip
import json
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def read_idx_images(path):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    n, h, w = (int.from_bytes(raw[i:i + 4], "big") for i in (4, 8, 12))
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, 1, h, w)


class Residual(nn.Module):
    def __init__(self, hidden, res, n):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.ModuleList([nn.Conv2d(hidden, res, 3, 1, 1), nn.Conv2d(res, hidden, 1)]) for _ in range(n))

    def forward(self, x):
        for c3, c1 in self.blocks:
            x = x + c1(F.relu(c3(F.relu(x))))
        return F.relu(x)


class Autoencoder(nn.Module):
    def __init__(self, hidden, res, n_res, d):
        super().__init__()
        self.e1 = nn.Conv2d(1, hidden // 2, 4, 2, 1)
        self.e2 = nn.Conv2d(hidden // 2, hidden, 4, 2, 1)
        self.e3 = nn.Conv2d(hidden, hidden, 3, 1, 1)
        self.e_res = Residual(hidden, res, n_res)
        self.pre = nn.Conv2d(hidden, d, 1)
        self.d1 = nn.Conv2d(d, hidden, 3, 1, 1)
        self.d_res = Residual(hidden, res, n_res)
        self.d2 = nn.ConvTranspose2d(hidden, hidden // 2, 4, 2, 1)
        self.d3 = nn.ConvTranspose2d(hidden // 2, 1, 4, 2, 1)

    def encode(self, x):
        h = F.relu(self.e1(x - 0.5))
        h = F.relu(self.e2(h))
        h = F.relu(self.e3(h))
        return self.pre(self.e_res(h))

    def decode(self, z):
        return self.d3(F.relu(self.d2(self.d_res(self.d1(z))))) + 0.5


def flat(z):
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])


def unflat(f, like):
    b, d, h, w = like.shape
    return f.reshape(b, h, w, d).permute(0, 3, 1, 2)


def nearest(f, e):
    return torch.cdist(f, e).argmin(1)


class VQ(nn.Module):
    def __init__(self, k, d, beta):
        super().__init__()
        self.codebook = nn.Parameter(torch.empty(k, d).uniform_(-1.0 / k, 1.0 / k))
        self.beta = beta

    def forward(self, z):
        f = flat(z)
        with torch.no_grad():
            idx = nearest(f, self.codebook)
        e = self.codebook[idx]
        loss = F.mse_loss(e, f.detach()) + self.beta * F.mse_loss(f, e.detach())
        return unflat(f + (e - f).detach(), z), loss, idx


class EMA(nn.Module):
    def __init__(self, k, d, beta, decay=0.99, eps=1e-5):
        super().__init__()
        self.k, self.beta, self.decay, self.eps = k, beta, decay, eps
        self.register_buffer("codebook", torch.empty(k, d).uniform_(-1.0 / k, 1.0 / k))
        self.register_buffer("hidden_size", torch.zeros(k))
        self.register_buffer("hidden_sum", torch.zeros(k, d))
        self.power = 1.0  # decay^t: the weight of the zero start still in the averages

    def seed(self, centroids, counts, per_batch):
        size = counts.clamp(min=1.0)
        size = size * per_batch / size.sum()
        self.codebook.copy_(centroids)
        self.hidden_size.copy_(size)
        self.hidden_sum.copy_(centroids * size[:, None])
        self.power = 0.0

    def forward(self, z):
        f = flat(z)
        with torch.no_grad():
            idx = nearest(f, self.codebook)
            if self.training:
                onehot = F.one_hot(idx, self.k).float()
                g = self.decay
                self.hidden_size -= (self.hidden_size - onehot.sum(0)) * (1 - g)
                self.hidden_sum -= (self.hidden_sum - onehot.t() @ f) * (1 - g)
                self.power *= g
                avg_size = self.hidden_size / (1 - self.power)
                avg_sum = self.hidden_sum / (1 - self.power)
                n = avg_size.sum()
                smoothed = (avg_size + self.eps) / (n + self.k * self.eps) * n
                self.codebook.copy_(avg_sum / smoothed[:, None])
        e = self.codebook[idx]
        loss = self.beta * F.mse_loss(f, e.detach())
        return unflat(f + (e - f).detach(), z), loss, idx


FSQ_LEVELS = {256: [8, 6, 5], 1024: [8, 5, 5, 5], 4096: [7, 5, 5, 5, 5]}


class Reference(nn.Module):
    """vector-quantize-pytorch's FSQ or LFQ behind this script's (z_q, loss, indices) form;
    indices of the implicit codebook (Π levels codes, or K bit patterns)."""

    def __init__(self, kind, k, d):
        super().__init__()
        import vector_quantize_pytorch as vqp
        self.kind = kind
        if kind == "fsq":
            self.q = vqp.FSQ(FSQ_LEVELS[k], dim=d)
            self.codes = int(np.prod(FSQ_LEVELS[k]))
        else:
            self.q = vqp.LFQ(dim=d, codebook_size=k, entropy_loss_weight=0.1, commitment_loss_weight=0.25)
            self.codes = k

    def forward(self, z):
        if self.kind == "fsq":
            zq, idx = self.q(z)
            loss = z.new_zeros(())
        else:
            zq, idx, loss = self.q(z)
        return zq, loss, idx.reshape(-1)


def kmeans(x, k, iters, gen):
    c = x[torch.randperm(x.shape[0], generator=gen)[:k]].clone()
    for _ in range(iters):
        a = nearest(x, c)
        counts = torch.bincount(a, minlength=k).float()
        sums = torch.zeros_like(c).index_add_(0, a, x)
        filled = counts > 0
        c[filled] = sums[filled] / counts[filled, None]
    return c, torch.bincount(nearest(x, c), minlength=k).float()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--kind", choices=["vq", "ema", "fsq", "lfq"], required=True)
    p.add_argument("--k", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=625)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--res", type=int, default=32)
    p.add_argument("--res-blocks", type=int, default=2)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--val", type=int, default=5000)
    p.add_argument("--eval", type=int, default=10000)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    t0 = time.time()
    torch.manual_seed(1000 + a.seed)
    gen = torch.Generator().manual_seed(2000 + a.seed)
    train = read_idx_images(f"{a.data}/train-images-idx3-ubyte.gz")
    train = torch.from_numpy(train[: len(train) - a.val].astype(np.float32) / 255.0)
    test = read_idx_images(f"{a.data}/t10k-images-idx3-ubyte.gz")[: a.eval]
    test = torch.from_numpy(test.astype(np.float32) / 255.0)

    ae = Autoencoder(a.hidden, a.res, a.res_blocks, a.dim)
    if a.kind in ("fsq", "lfq"):
        vq = Reference(a.kind, a.k, a.dim)
    else:
        vq = (VQ if a.kind == "vq" else EMA)(a.k, a.dim, 0.25)
    codes = getattr(vq, "codes", a.k)
    params = list(ae.parameters()) + list(vq.parameters())
    opt = torch.optim.Adam(params, lr=a.lr, betas=(0.9, 0.999))

    order, pos = torch.randperm(len(train), generator=gen), 0

    def next_batch():
        nonlocal order, pos
        if pos + a.batch > len(order):
            order, pos = torch.randperm(len(train), generator=gen), 0
        idx = order[pos:pos + a.batch]
        pos += a.batch
        return train[idx]

    batches = [next_batch() for _ in range(a.steps)]
    if a.kind == "ema":
        with torch.no_grad():
            parts, rows = [], 0
            for b in batches[:50]:
                parts.append(flat(ae.encode(b)))
                rows += parts[-1].shape[0]
                if rows >= 20 * a.k:
                    break
            c, counts = kmeans(torch.cat(parts), a.k, 10, gen)
            vq.seed(c, counts, parts[0].shape[0])

    ae.train()
    vq.train()
    for x in batches:
        zq, q_loss, _ = vq(ae.encode(x))
        loss = F.mse_loss(ae.decode(zq), x) + q_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    ae.eval()
    vq.eval()
    sq, psnr, counts = 0.0, 0.0, torch.zeros(codes, dtype=torch.float64)
    with torch.no_grad():
        for i in range(0, len(test), 500):
            x = test[i:i + 500]
            zq, _, idx = vq(ae.encode(x))
            mse = ((ae.decode(zq).clamp(0, 1) - x) ** 2).flatten(1).mean(1).double()
            sq += mse.sum().item()
            psnr += (10 * torch.log10(1.0 / mse.clamp(min=1e-10))).sum().item()
            counts += torch.bincount(idx, minlength=codes).double()
    p_k = counts / counts.sum()
    nz = p_k[p_k > 0]
    print(json.dumps({
        "kind": a.kind, "k": a.k, "seed": a.seed,
        "rec_mse": sq / len(test), "psnr": psnr / len(test),
        "usage": float((counts > 0).double().mean()), "perplexity": float(torch.exp(-(nz * nz.log()).sum())),
        "seconds": time.time() - t0,
    }))


if __name__ == "__main__":
    main()
