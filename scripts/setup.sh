#!/usr/bin/env bash
# Set up vqlab on a Debian machine: system packages (real Fashion-MNIST from Debian's
# dataset-fashion-mnist, a C toolchain, Python 3 for the test oracles), then the release
# build. With --quickstart, also run experiments/quickstart.toml end to end.
#
#   bash scripts/setup.sh               # packages + build
#   bash scripts/setup.sh --quickstart  # packages + build + the quickstart sweep (~2 min once built)
#   bash scripts/setup.sh --deps-only   # packages only, Slurm included (what scripts/test.sh runs first)
set -euo pipefail
cd "$(dirname "$0")/.."

mode=build
case "${1:-}" in
  --quickstart) mode=quickstart ;;
  --deps-only) mode=deps ;;
  "") ;;
  *) echo "usage: $0 [--quickstart|--deps-only]" >&2; exit 2 ;;
esac

# fonts-dejavu-core: the text of `vqlab plot`'s PNG figures.
packages=(dataset-fashion-mnist build-essential pkg-config python3 fonts-dejavu-core)
# What only the tests need: a real single-node Slurm (scripts/slurm_local.sh), pdflatex with
# booktabs for the report tables, headless Chromium for the comparison page.
[ "$mode" = deps ] && packages+=(slurm-wlm munge texlive-latex-base texlive-latex-recommended chromium)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "need root or sudo to install: ${missing[*]}" >&2; exit 1; }
    sudo=sudo
  fi
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# numpy, scipy, pyarrow, pandas, tensorboard and pillow for the test oracles (tests/oracles).
if ! python3 -c "import numpy, scipy, pyarrow, pandas, tensorboard, PIL" 2>/dev/null; then
  echo "installing the test oracles' Python packages: $(tr '\n' ' ' < tests/oracles/requirements.txt)"
  python3 -m pip install --quiet -r tests/oracles/requirements.txt 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages -r tests/oracles/requirements.txt
fi
[ "$mode" = deps ] && exit 0

if ! command -v cargo >/dev/null; then
  echo "cargo not found: install Rust (https://rustup.rs), then run this script again" >&2
  exit 1
fi
echo "building vqlab (release; the first build compiles candle and polars: ~15 minutes on 2 cores)"
cargo build --release --locked
bin="${CARGO_TARGET_DIR:-target}/release/vqlab"
echo "built $bin"

if [ "$mode" = quickstart ]; then
  "$bin" run experiments/quickstart.toml
  # What a paper takes from it: a table, a figure, the side-by-side page.
  "$bin" report runs/quickstart --rows quantizer.codebook_size --cols model.variant \
    --metrics eval/rec_mse,eval/usage,eval/perplexity,eval/rfid --out runs/quickstart/table.md
  "$bin" report runs/quickstart --rows quantizer.codebook_size --cols model.variant \
    --metrics eval/rec_mse,eval/usage,eval/perplexity,eval/rfid --out runs/quickstart/table.tex
  # Validation rec MSE means the same for every run (train/rec_loss is L1 for VQ-GAN, MSE for VQ-VAE).
  "$bin" plot runs/quickstart --curves --y val/rec_mse --out runs/quickstart/val_rec_mse.png
  "$bin" compare runs/quickstart --out runs/quickstart/compare.html
  echo
  cat runs/quickstart/table.md
  echo
  echo "done: results in runs/quickstart/ (per run: summary.json, metrics.parquet, samples/*.png)"
  echo "      tables runs/quickstart/table.{md,tex}, figure val_rec_mse.png, page compare.html"
  echo "      $bin status runs/quickstart"
fi
