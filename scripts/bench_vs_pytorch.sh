#!/usr/bin/env bash
# vqlab's training step against PyTorch's on this machine's CPU: the step of
# experiments/bench_step.toml (Sonnet's VQ-VAE: hidden 128, residual 32, 2 residual blocks,
# D = 64, K = 512, 28×28×1, batch 128, MSE + VQ losses, Adam; and the VQ-GAN step with
# taming's PatchGAN and adaptive weight) in `vqlab bench` and in scripts/bench/torch_step.py,
# both with the same number of threads, alternating for several rounds in one invocation.
# Prints img/s of every measurement, the medians and their ratio (vqlab / PyTorch), and the
# median of the per-round ratios (each round's two measurements ran back to back, so it is
# less moved by the machine's speed drifting between rounds). The third
# variant, prior, is the stage-2 transformer's step (`vqlab bench --prior` against
# scripts/bench/torch_prior_step.py, minGPT with PyTorch's fused attention); its img/s counts
# code grids. The variants ema, fsq, lfq and simvq are the VQ-VAE step with that quantizer kind
# (vqlab's `--set quantizer.kind=…` against vector-quantize-pytorch's FSQ, LFQ and SimVQ and the
# Sonnet EMA twin; fsq at K = 1024, the FSQ paper's [8, 5, 5, 5]); they need the
# vector-quantize-pytorch package, which scripts/torch_venv.sh then installs. vqvae and vqgan
# run at the default `train.conv_algorithm` (winograd4); the variants vqvae-im2row and
# vqgan-im2row are those steps with `"im2row"` (every convolution a gemm over the row matrix,
# the default until 2026-12-06), vqvae-winograd and vqgan-winograd with `"winograd"` (the 3×3
# convolutions as Winograd F(2×2, 3×3)), against the same PyTorch steps.
#
# Then it trains the VQ-VAE configuration with `vqlab run` and compares the median of the
# run's logged train/img_per_s with the benchmark's median (they should agree within 10%).
#
#   bash scripts/bench_vs_pytorch.sh                    # ROUNDS=5 STEPS=20 THREADS=nproc
#   ROUNDS=7 STEPS=30 bash scripts/bench_vs_pytorch.sh
#   VARIANTS=vqvae RUN_CHECK=0 bash scripts/bench_vs_pytorch.sh
#   VARIANTS="ema fsq lfq simvq" RUN_CHECK=0 bash scripts/bench_vs_pytorch.sh
#   VARIANTS="vqvae vqvae-im2row vqgan vqgan-im2row" bash scripts/bench_vs_pytorch.sh
#
# PyTorch (with numpy, and pyarrow to read the run's Parquet) comes from pip into a virtual
# environment under ~/.cache (scripts/torch_venv.sh); set TORCH_PYTHON to use another
# interpreter that already has torch and pyarrow.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
STEPS=${STEPS:-20}
WARMUP=${WARMUP:-3}
THREADS=${THREADS:-$(nproc)}
VARIANTS=${VARIANTS:-"vqvae vqgan prior"}
RUN_CHECK=${RUN_CHECK:-1}
RUN_STEPS=${RUN_STEPS:-200}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/vqlab-target}

source scripts/torch_venv.sh
case " $VARIANTS " in
  *" fsq "* | *" lfq "* | *" simvq "*)
    if ! "$TORCH_PYTHON" -c 'import vector_quantize_pytorch' 2>/dev/null; then
      echo "installing vector-quantize-pytorch for $TORCH_PYTHON (the fsq, lfq and simvq variants)" >&2
      "$TORCH_PYTHON" -m pip install --quiet vector-quantize-pytorch
    fi ;;
esac
# Checked before the rounds, not after them: the run check reads metrics.parquet with pyarrow.
if [ "$RUN_CHECK" = 1 ] && ! "$TORCH_PYTHON" -c 'import pyarrow' 2>/dev/null; then
  echo "error: $TORCH_PYTHON has no pyarrow, which the run check needs (pip install pyarrow, or RUN_CHECK=0)" >&2
  exit 2
fi

cargo build --release --locked --quiet
VQLAB="$CARGO_TARGET_DIR/release/vqlab"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export RAYON_NUM_THREADS=$THREADS

field() { python3 -c 'import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])[sys.argv[1]])' "$1"; }

echo "training step, vqlab vs PyTorch: $ROUNDS alternating rounds of $STEPS timed steps (after $WARMUP), $THREADS thread(s)"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//') ($(nproc) cores seen)"
echo "torch: $("$TORCH_PYTHON" -c 'import torch; print(torch.__version__, "MKL-DNN" if torch.backends.mkldnn.is_available() else "")')"
for variant in $VARIANTS; do
  : >"$WORK/$variant.vqlab"
  : >"$WORK/$variant.torch"
  for r in $(seq 1 "$ROUNDS"); do
    case $variant in
      ema | fsq | lfq | simvq)
        k=512
        [ "$variant" = fsq ] && k=1024
        v=$("$VQLAB" -q bench experiments/bench_step.toml --set quantizer.kind="$variant" \
            --set quantizer.codebook_size=$k --set hardware.threads_per_run="$THREADS" \
            --steps "$STEPS" --warmup "$WARMUP" --json | field img_per_s)
        t=$("$TORCH_PYTHON" scripts/bench/torch_step.py --kind "$variant" --k $k --threads "$THREADS" \
            --steps "$STEPS" --warmup "$WARMUP" | field img_per_s) ;;
      prior)
        # The stage-2 transformer at vqlab's [prior] defaults over the 7×7 grid of K = 512 codes.
        v=$("$VQLAB" -q bench experiments/bench_step.toml --prior \
            --set hardware.threads_per_run="$THREADS" --steps "$STEPS" --warmup "$WARMUP" --json | field img_per_s)
        t=$("$TORCH_PYTHON" scripts/bench/torch_prior_step.py --threads "$THREADS" \
            --steps "$STEPS" --warmup "$WARMUP" | field img_per_s) ;;
      *)
        # vqvae-im2row, vqgan-winograd, …: the step with train.conv_algorithm = "im2row", …;
        # vqvae and vqgan at the default.
        base=${variant%%-*}
        algorithm=()
        [ "$base" != "$variant" ] && algorithm=(--set "train.conv_algorithm=${variant#*-}")
        v=$("$VQLAB" -q bench experiments/bench_step.toml --set model.variant="$base" "${algorithm[@]}" \
            --set hardware.threads_per_run="$THREADS" --steps "$STEPS" --warmup "$WARMUP" --json | field img_per_s)
        t=$("$TORCH_PYTHON" scripts/bench/torch_step.py --variant "$base" --threads "$THREADS" \
            --steps "$STEPS" --warmup "$WARMUP" | field img_per_s) ;;
    esac
    echo "$v" >>"$WORK/$variant.vqlab"
    echo "$t" >>"$WORK/$variant.torch"
    printf '%s round %d: vqlab %7.1f img/s   pytorch %7.1f img/s   ratio %.3f\n' "$variant" "$r" "$v" "$t" \
      "$(python3 -c "print($v / $t)")"
  done
done
python3 - "$WORK" $VARIANTS <<'PY'
import statistics, sys
work, variants = sys.argv[1], sys.argv[2:]
for v in variants:
    a = [float(x) for x in open(f"{work}/{v}.vqlab")]
    b = [float(x) for x in open(f"{work}/{v}.torch")]
    ratios = [x / y for x, y in zip(a, b)]
    print(f"{v}: median vqlab {statistics.median(a):.1f} img/s, pytorch {statistics.median(b):.1f} img/s; "
          f"ratio of medians {statistics.median(a) / statistics.median(b):.3f} "
          f"(per-round ratios {min(ratios):.3f} to {max(ratios):.3f}, their median {statistics.median(ratios):.3f})")
PY

if [ "$RUN_CHECK" = 1 ] && [ -s "$WORK/vqvae.vqlab" ]; then
  bench=$(python3 -c 'import statistics,sys; print(statistics.median(float(x) for x in open(sys.argv[1])))' "$WORK/vqvae.vqlab")
  "$VQLAB" -q run experiments/bench_step.toml --runs-dir "$WORK/runs" --set train.steps="$RUN_STEPS" \
    --set hardware.threads_per_run="$THREADS" >/dev/null
  "$TORCH_PYTHON" - "$WORK/runs/bench-step" "$bench" <<'PY'
import glob, statistics, sys
import pyarrow.parquet as pq
run = glob.glob(sys.argv[1] + "/*/metrics.parquet")[0]
t = pq.read_table(run).to_pydict()
rows = [(s, v) for s, sp, m, v in zip(t["step"], t["split"], t["metric"], t["value"]) if (sp, m) == ("train", "img_per_s")]
rows.sort()
# The first logged interval includes allocator and cache warm-up, as the benchmark's warm-up steps do.
values = [v for _, v in rows[1:]] or [v for _, v in rows]
logged, bench = statistics.median(values), float(sys.argv[2])
print(f"vqlab run: median train/img_per_s {logged:.1f} over {len(values)} log intervals; "
      f"benchmark {bench:.1f}; run / benchmark {logged / bench:.3f}")
PY
fi
