#!/usr/bin/env bash
# Each convolution layer of experiments/bench_step.toml's step (batch 128; the VQ-VAE's distinct
# shapes and the discriminator's two largest) timed alone in vqlab (benches/conv_layers.rs) and
# in PyTorch (scripts/bench/torch_conv_layers.py), forward and forward + backward, in
# alternating rounds in one invocation. Prints each layer's medians over the rounds and the
# speed ratio vqlab / PyTorch (above 1: vqlab is faster). Where `scripts/bench_vs_pytorch.sh`
# says how far apart the whole steps are, this says which layers and which pass make it up.
#
#   bash scripts/bench_conv_layers.sh                   # ROUNDS=3 REPS=7 THREADS=nproc
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
REPS=${REPS:-7}
THREADS=${THREADS:-$(nproc)}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/vqlab-target}
source scripts/torch_venv.sh
# The bench sets up candle's threads as `vqlab` does (its elementwise ops on rayon's pool).
export RAYON_NUM_THREADS=$THREADS
cargo bench --locked --quiet --bench conv_layers --no-run
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
for r in $(seq 1 "$ROUNDS"); do
  cargo bench --locked --quiet --bench conv_layers -- --reps "$REPS" >"$WORK/vqlab.$r"
  "$TORCH_PYTHON" scripts/bench/torch_conv_layers.py --reps "$REPS" --threads "$THREADS" >"$WORK/torch.$r"
  echo "round $r done" >&2
done
python3 - "$WORK" "$ROUNDS" "$THREADS" <<'PY'
import json, statistics, sys
work, rounds, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def load(side):
    out = {}
    for r in range(1, rounds + 1):
        for line in open(f"{work}/{side}.{r}"):
            d = json.loads(line)
            out.setdefault(d["layer"], []).append((d["fwd_ms"], d["fwd_bwd_ms"]))
    return out
v, t = load("vqlab"), load("torch")
print(f"{rounds} alternating rounds, {threads} thread(s); ms are medians over the rounds")
print(f"{'layer':24} {'vqlab fwd':>10} {'torch fwd':>10} {'ratio':>6}   {'vqlab f+b':>10} {'torch f+b':>10} {'ratio':>6}")
tot = [0.0] * 4
for layer in v:
    vf = statistics.median(x[0] for x in v[layer]); tf = statistics.median(x[0] for x in t[layer])
    vb = statistics.median(x[1] for x in v[layer]); tb = statistics.median(x[1] for x in t[layer])
    for i, x in enumerate((vf, tf, vb, tb)):
        tot[i] += x
    print(f"{layer:24} {vf:10.2f} {tf:10.2f} {tf / vf:6.3f}   {vb:10.2f} {tb:10.2f} {tb / vb:6.3f}")
print(f"{'sum of the layers':24} {tot[0]:10.2f} {tot[1]:10.2f} {tot[1] / tot[0]:6.3f}   {tot[2]:10.2f} {tot[3]:10.2f} {tot[3] / tot[2]:6.3f}")
PY
