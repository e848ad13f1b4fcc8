"""The PyTorch side of scripts/bench_vs_pytorch.sh for the stage-2 prior: the training step of
the transformer `vqlab bench --prior` times, written the way a careful PyTorch user would write
minGPT today: token and position embeddings, pre-LayerNorm blocks of causal self-attention
(F.scaled_dot_product_attention with is_causal=True, PyTorch's fused kernel) and a 4x GELU
MLP, a final LayerNorm and a linear head, dropout on the embeddings, the attention weights and
the residual branches, cross-entropy on the next code, Adam with betas (0.9, 0.95).

Shapes default to vqlab's `[prior]` defaults on experiments/bench_step.toml: 4 blocks, width
128, 4 heads, dropout 0.1, batch 64, 49 positions (a 7x7 code grid), K = 512.

Prints one JSON object: code grids per second over the timed steps (as img_per_s, the field
the script reads) and the per-step times.
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, width, heads, dropout):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.fc, self.out = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, c // self.heads).unbind(2)
        q, k, v = (u.transpose(1, 2) for u in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(b, t, c)))
        return x + self.drop(self.out(F.gelu(self.fc(self.ln2(x)))))


class Prior(nn.Module):
    def __init__(self, codes, positions, layers, width, heads, dropout):
        super().__init__()
        self.tok = nn.Embedding(codes + 1, width)
        self.pos = nn.Parameter(torch.zeros(positions, width))
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(width, heads, dropout) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, codes, bias=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, 0.02)
        nn.init.normal_(self.pos, 0.0, 0.02)

    def forward(self, tokens):
        x = self.drop(self.tok(tokens) + self.pos[: tokens.shape[1]])
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln_f(x))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--codes", type=int, default=512)
    ap.add_argument("--positions", type=int, default=49)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--dropout", type=float, default=0.1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Prior(args.codes, args.positions, args.layers, args.width, args.heads, args.dropout)
    opt = torch.optim.Adam(model.parameters(), lr=3e-4, betas=(0.9, 0.95))
    pool = torch.randint(0, args.codes, (10 * args.batch, args.positions))
    start = torch.full((args.batch, 1), args.codes, dtype=torch.long)

    def step(i):
        codes = pool[(i % 10) * args.batch : (i % 10 + 1) * args.batch]
        tokens = torch.cat([start, codes[:, :-1]], 1)
        logits = model(tokens)
        loss = F.cross_entropy(logits.reshape(-1, args.codes), codes.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    for i in range(args.warmup):
        step(i)
    times = []
    t_all = time.perf_counter()
    for i in range(args.warmup, args.warmup + args.steps):
        t0 = time.perf_counter()
        step(i)
        times.append((time.perf_counter() - t0) * 1e3)
    secs = time.perf_counter() - t_all
    print(
        json.dumps(
            {
                "model": f"pytorch {torch.__version__} prior",
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
