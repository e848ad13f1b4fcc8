#!/usr/bin/env bash
# Learning parity: the recipe of experiments/parity.toml (Sonnet's VQ-VAE on real
# Fashion-MNIST, 625 steps, 3 seeds; `vq` K = 256 and `ema` + k-means K = 512) trained by
# `vqlab run` and by an independent PyTorch implementation (scripts/parity/torch_vqvae.py).
# For each quantizer it prints eval rec MSE and usage, mean ± std over the seeds, and checks
# that the means agree within two pooled standard deviations of the seed spread. Exit 1 if
# they do not. About 5 minutes on 2 CPU cores once vqlab is built.
#
#   bash scripts/parity_vs_pytorch.sh            # SEEDS="0 1 2"
#   SEEDS="0 1 2 3 4" bash scripts/parity_vs_pytorch.sh
#
# PyTorch comes from pip into the venv of scripts/torch_venv.sh (~/.cache); set TORCH_PYTHON
# to use another interpreter that has torch and numpy.
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${SEEDS:-"0 1 2"}
DATA=${DATA:-/usr/share/datasets/fashion-mnist}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/vqlab-target}
[ -d "$DATA" ] || { echo "error: $DATA not found (bash scripts/setup.sh installs dataset-fashion-mnist)" >&2; exit 2; }

source scripts/torch_venv.sh

cargo build --release --locked --quiet
VQLAB="$CARGO_TARGET_DIR/release/vqlab"
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$WORK"
echo "work dir: $WORK" >&2
seeds_toml="[$(echo $SEEDS | sed 's/ /, /g')]"

"$VQLAB" run experiments/parity.toml --runs-dir "$WORK/runs" --set "sweep.seeds=$seeds_toml" --set "data.path=\"$DATA\"" >&2
touch "$WORK/torch.jsonl"
for seed in $SEEDS; do
  for spec in "vq 256" "ema 512"; do
    set -- $spec
    # Like vqlab's runs, a PyTorch run already in the work dir is not trained again.
    if grep -q "\"kind\": \"$1\", \"k\": $2, \"seed\": $seed," "$WORK/torch.jsonl"; then
      continue
    fi
    echo "PyTorch: $1 K=$2 seed $seed" >&2
    "$TORCH_PYTHON" scripts/parity/torch_vqvae.py --data "$DATA" --kind "$1" --k "$2" --seed "$seed" \
      --threads "$(nproc)" >> "$WORK/torch.jsonl"
  done
done

python3 - "$WORK" "$SEEDS" <<'PY'
import glob, json, math, statistics, sys
work = sys.argv[1]
seeds = set(sys.argv[2].split())
vqlab = {}
for f in glob.glob(f"{work}/runs/parity/*/summary.json"):
    s = json.load(open(f))
    if str(s["train.seed"]) in seeds:
        vqlab.setdefault(s["quantizer.kind"], []).append(s)
torch = {}
for line in open(f"{work}/torch.jsonl"):
    r = json.loads(line)
    if str(r["seed"]) in seeds:
        torch.setdefault(r["kind"], []).append(r)

def stat(xs):
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else float("nan"))

failed = 0
print(f"{'quantizer':<22} {'metric':<8} {'vqlab mean ± std':>22} {'PyTorch mean ± std':>22} {'|diff| / pooled std':>20}")
for kind, label in (("vq", "vq K=256"), ("ema", "ema+k-means K=512")):
    a, b = vqlab.get(kind, []), torch.get(kind, [])
    if not a or not b or len(a) != len(b):
        print(f"{label}: missing runs (vqlab {len(a)}, PyTorch {len(b)})")
        failed += 1
        continue
    for metric, va, vb in (("rec_mse", [s["eval/rec_mse"] for s in a], [r["rec_mse"] for r in b]),
                           ("usage", [s["eval/usage"] for s in a], [r["usage"] for r in b])):
        (ma, sa), (mb, sb) = stat(va), stat(vb)
        pooled = math.sqrt((sa * sa + sb * sb) / 2)
        z = abs(ma - mb) / pooled if pooled > 0 else float("inf")
        ok = z <= 2.0
        failed += not ok
        print(f"{label:<22} {metric:<8} {ma:>12.5f} ± {sa:<8.5f} {mb:>12.5f} ± {sb:<8.5f} {z:>12.2f} {'PASS' if ok else 'FAIL'}")
print(f"seeds: {len(next(iter(vqlab.values()), []))}; vqlab img/s {statistics.mean(s['train/img_per_s'] for v in vqlab.values() for s in v):.0f}")
sys.exit(1 if failed else 0)
PY
