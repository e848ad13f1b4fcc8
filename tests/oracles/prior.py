"""A minGPT-style decoder-only transformer (taming-transformers' stage 2) in numpy, written
from the GPT-2 / minGPT description rather than from vqlab:

  x_0 = tok_emb[tokens] + pos_emb[:T]
  per block: x += proj(causal_attention(LN1(x)));  x += W2 gelu(W1 LN2(x) + b1) + b2
  attention: per head softmax(q k^T / sqrt(d_head) + causal mask) v, heads concatenated
  logits = LN_f(x) head^T;  LayerNorm with biased variance and eps 1e-5; exact (erf) GELU
  cross-entropy: mean over positions of logsumexp(logits) - logits[target]

Reads {"params": {name: {"shape", "data"}}, "tokens", "targets", "layers", "heads"} from
argv[1]; prints {"logits", "ce"}. float64 throughout.
"""
import json
import math
import sys

import numpy as np

spec = json.load(open(sys.argv[1]))
P = {k: np.array(v["data"], dtype=np.float64).reshape(v["shape"]) for k, v in spec["params"].items()}
tokens = np.array(spec["tokens"], dtype=np.int64)
targets = np.array(spec["targets"], dtype=np.int64)
layers, heads = spec["layers"], spec["heads"]
erf = np.vectorize(math.erf)


def ln(x, name):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * P[name + ".weight"] + P[name + ".bias"]


def lin(x, name, bias=True):
    y = x @ P[name + ".weight"].T
    return y + P[name + ".bias"] if bias else y


b, t = tokens.shape
c = P["prior.pos_emb"].shape[1]
hd = c // heads
x = P["prior.tok_emb"][tokens] + P["prior.pos_emb"][:t]
mask = np.triu(np.full((t, t), -np.inf), 1)
for l in range(layers):
    n = f"prior.blocks.{l}."
    qkv = lin(ln(x, n + "ln1"), n + "attn.qkv").reshape(b, t, 3, heads, hd)
    q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
    s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd) + mask
    s = np.exp(s - s.max(-1, keepdims=True))
    a = s / s.sum(-1, keepdims=True)
    y = (a @ v).transpose(0, 2, 1, 3).reshape(b, t, c)
    x = x + lin(y, n + "attn.proj")
    h = lin(ln(x, n + "ln2"), n + "mlp.fc")
    h = 0.5 * h * (1 + erf(h / math.sqrt(2)))
    x = x + lin(h, n + "mlp.proj")
logits = lin(ln(x, "prior.ln_f"), "prior.head", bias=False)
flat = logits.reshape(b * t, -1)
m = flat.max(-1, keepdims=True)
lse = (m + np.log(np.exp(flat - m).sum(-1, keepdims=True)))[:, 0]
ce = float(np.mean(lse - flat[np.arange(b * t), targets.reshape(-1)]))
print(json.dumps({"logits": logits.reshape(-1).tolist(), "ce": ce}))
