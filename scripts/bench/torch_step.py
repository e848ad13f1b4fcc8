"""The PyTorch side of scripts/bench_vs_pytorch.sh: the training step of
experiments/bench_step.toml written the way a careful PyTorch user would write it.

VQ-VAE: Sonnet's encoder/decoder (stride-2 4x4 convs, a 3x3 conv with ReLU, a residual stack of
relu-conv3x3-relu-conv1x1 blocks, a 1x1 pre-VQ conv; the mirror image with transposed convs),
a vector quantizer (nearest code by one matmul, codebook + beta * commitment losses,
straight-through), MSE reconstruction, Adam.

VQ-GAN: the same generator plus taming-transformers' PatchGAN (4x4 convs, ActNorm, LeakyReLU
0.2), hinge loss, and taming's adaptive weight from the gradients of the reconstruction and
generator losses at the decoder's last layer; the discriminator is frozen during the
generator's backward pass and updated on the same batch afterwards.

--kind swaps the quantizer for the quantizer kinds' step (vqlab bench --set quantizer.kind=…):
"ema", "fsq" and "lfq" are scripts/parity/torch_vqvae.py's (its Sonnet VectorQuantizerEMA twin,
and vector-quantize-pytorch's own FSQ with the FSQ paper's levels for K and LFQ with entropy
weight 0.1 and commitment 0.25); "simvq" is vector-quantize-pytorch's SimVQ (straight-through,
vqlab's default gradient). The package's modules are the implementations vqlab's kinds of the
same names follow.

Prints one JSON object: img/s over the timed steps and the per-step times. With
--device cuda everything lives on the GPU and each timed step ends with a synchronisation,
as vqlab's bench reads its loss back after each step.
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Residual(nn.Module):
    def __init__(self, hidden, res, n):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.ModuleList([nn.Conv2d(hidden, res, 3, 1, 1), nn.Conv2d(res, hidden, 1)]) for _ in range(n)
        )

    def forward(self, x):
        for c3, c1 in self.blocks:
            x = x + c1(F.relu(c3(F.relu(x))))
        return F.relu(x)


class VectorQuantizer(nn.Module):
    """Nearest code by one matmul, codebook + beta * commitment losses, straight-through."""

    def __init__(self, k, embed_dim, beta=0.25):
        super().__init__()
        self.codebook = nn.Parameter(torch.empty(k, embed_dim).uniform_(-1.0 / k, 1.0 / k))
        self.beta = beta

    def forward(self, z):
        b, d, hh, ww = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        e = self.codebook
        with torch.no_grad():
            idx = torch.argmin(0.5 * (e * e).sum(1)[None, :] - flat @ e.t(), dim=1)
        chosen = e[idx]
        q_loss = F.mse_loss(chosen, flat.detach()) + self.beta * F.mse_loss(flat, chosen.detach())
        st = flat + (chosen - flat).detach()
        return st.reshape(b, hh, ww, d).permute(0, 3, 1, 2), q_loss


class Parity(nn.Module):
    """A quantizer of scripts/parity/torch_vqvae.py (the Sonnet EMA twin, and its wrapper of
    vector-quantize-pytorch's FSQ and LFQ with the parity check's settings), as (z_q, loss)."""

    def __init__(self, kind, k, embed_dim):
        super().__init__()
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "parity"))
        from torch_vqvae import EMA, Reference

        self.q = EMA(k, embed_dim, 0.25) if kind == "ema" else Reference(kind, k, embed_dim)

    def forward(self, z):
        zq, loss, _ = self.q(z)
        return zq, loss


class SimVQ(nn.Module):
    """vector-quantize-pytorch's SimVQ, straight-through (vqlab's default gradient), as (z_q, loss)."""

    def __init__(self, k, embed_dim):
        super().__init__()
        import vector_quantize_pytorch as vqp

        self.q = vqp.SimVQ(dim=embed_dim, codebook_size=k, channel_first=True, rotation_trick=False)

    def forward(self, z):
        zq, _, loss = self.q(z)
        return zq, loss


def make_quantizer(kind, k, embed_dim):
    if kind == "vq":
        return VectorQuantizer(k, embed_dim)
    if kind == "simvq":
        return SimVQ(k, embed_dim)
    return Parity(kind, k, embed_dim)


class VQModel(nn.Module):
    def __init__(self, channels, hidden, res, n_res, embed_dim, k, kind="vq"):
        super().__init__()
        self.enc = nn.ModuleList([nn.Conv2d(channels, hidden // 2, 4, 2, 1), nn.Conv2d(hidden // 2, hidden, 4, 2, 1)])
        self.enc_conv3 = nn.Conv2d(hidden, hidden, 3, 1, 1)
        self.enc_res = Residual(hidden, res, n_res)
        self.pre_vq = nn.Conv2d(hidden, embed_dim, 1)
        self.quantize = make_quantizer(kind, k, embed_dim)
        self.dec_in = nn.Conv2d(embed_dim, hidden, 3, 1, 1)
        self.dec_res = Residual(hidden, res, n_res)
        self.up0 = nn.ConvTranspose2d(hidden, hidden // 2, 4, 2, 1)
        self.up1 = nn.ConvTranspose2d(hidden // 2, channels, 4, 2, 1)

    def forward(self, x):
        h = x - 0.5
        for c in self.enc:
            h = F.relu(c(h))
        z = self.pre_vq(self.enc_res(F.relu(self.enc_conv3(h))))
        zq, q_loss = self.quantize(z)
        h = self.dec_res(self.dec_in(zq))
        x_hat = self.up1(F.relu(self.up0(h))) + 0.5
        return x_hat, q_loss


class ActNorm(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.scale = nn.Parameter(torch.ones(1, c, 1, 1))
        self.initialized = False

    def forward(self, x):
        if not self.initialized:
            with torch.no_grad():
                mean = x.mean(dim=(0, 2, 3), keepdim=True)
                std = x.std(dim=(0, 2, 3), keepdim=True, unbiased=False)
                self.loc.copy_(-mean)
                self.scale.copy_(1.0 / (std + 1e-6))
            self.initialized = True
        return self.scale * (x + self.loc)


class Discriminator(nn.Module):
    """pix2pix NLayerDiscriminator with ActNorm, as taming builds it (n_layers = 2 at 28x28)."""

    def __init__(self, channels, ndf, n_layers):
        super().__init__()
        layers = [nn.Conv2d(channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2)]
        mult = 1
        for i in range(1, n_layers + 1):
            prev, mult = mult, min(2**i, 8)
            stride = 1 if i == n_layers else 2
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=False), ActNorm(ndf * mult), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, x):
        return self.main(x)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", choices=["vqvae", "vqgan"], default="vqvae")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--kind", choices=["vq", "ema", "fsq", "lfq", "simvq"], default="vq", help="quantizer kind")
    ap.add_argument("--k", type=int, default=512, help="codebook size K")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    model = VQModel(channels=1, hidden=128, res=32, n_res=2, embed_dim=64, k=args.k, kind=args.kind).to(dev)
    # Sonnet's betas for the VQ-VAE, taming's for the VQ-GAN (vqlab's defaults); speed does not
    # depend on them.
    betas = (0.9, 0.999) if args.variant == "vqvae" else (0.5, 0.9)
    opt_g = torch.optim.Adam(model.parameters(), lr=2e-4, betas=betas)
    disc = opt_d = None
    if args.variant == "vqgan":
        disc = Discriminator(channels=1, ndf=64, n_layers=2).to(dev)
        opt_d = torch.optim.Adam(disc.parameters(), lr=2e-4, betas=(0.5, 0.9))
    # A pool of images in [0, 1], cycled batch by batch like an epoch of a dataset.
    pool = torch.rand(10 * args.batch, 1, 28, 28, device=dev)
    last_layer = model.up1.weight

    def step(i):
        x = pool[(i % 10) * args.batch : (i % 10 + 1) * args.batch]
        x_hat, q_loss = model(x)
        rec = F.mse_loss(x_hat, x)
        if disc is None:
            loss = rec + q_loss
            opt_g.zero_grad(set_to_none=True)
            loss.backward()
            opt_g.step()
            return
        disc.requires_grad_(False)
        g_loss = -disc(x_hat).mean()
        g_rec = torch.autograd.grad(rec, last_layer, retain_graph=True)[0]
        g_adv = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
        d_weight = (torch.norm(g_rec) / (torch.norm(g_adv) + 1e-4)).clamp(0.0, 1e4).detach()
        loss = rec + q_loss + d_weight * g_loss
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
        disc.requires_grad_(True)
        logits_real = disc(x)
        logits_fake = disc(x_hat.detach())
        d_loss = 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()

    for i in range(args.warmup):
        step(i)
    sync()
    times = []
    t_all = time.perf_counter()
    for i in range(args.warmup, args.warmup + args.steps):
        t0 = time.perf_counter()
        step(i)
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    secs = time.perf_counter() - t_all
    print(
        json.dumps(
            {
                "model": f"pytorch {torch.__version__} {args.variant} {args.kind} K={args.k}",
                "device": str(dev),
                "threads": torch.get_num_threads(),
                "batch_size": args.batch,
                "steps": args.steps,
                "img_per_s": args.steps * args.batch / secs,
                "median_step_ms": statistics.median(times),
                "step_ms": times,
            }
        )
    )


if __name__ == "__main__":
    main()
