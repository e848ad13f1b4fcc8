#!/usr/bin/env bash
# Fan-out efficiency of the local scheduler: 32 equal tiny runs on S CPU slots (1 thread
# each) against one such run alone. Ideal: 32/S × one run's wall time (start-up included,
# since the single run is timed as a whole `vqlab run`). Prints the ratio; the goal is ≤ 1.05.
#
#   bash scripts/bench_slots.sh          # S = number of cores
#   SLOTS=2 STEPS=60 bash scripts/bench_slots.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SLOTS=${SLOTS:-$(nproc)}
STEPS=${STEPS:-60}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/vqlab-target}
cargo build --release --locked --quiet
VQLAB="$CARGO_TARGET_DIR/release/vqlab"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cat >"$WORK/exp.toml" <<TOML
[experiment]
name = "bench"
[data]
dataset = "synthetic"
train_images = 1024
eval_images = 128
[model]
hidden_channels = 32
res_channels = 16
res_blocks = 1
[quantizer]
codebook_size = 64
embed_dim = 16
[train]
steps = $STEPS
batch_size = 32
log_every = 20
eval_every = $STEPS
checkpoint_every = $STEPS
[eval]
fid = false
[hardware]
threads_per_run = 1
TOML
now() { date +%s.%N; }
# One run alone (three times; the median).
singles=()
for i in 1 2 3; do
  t0=$(now)
  "$VQLAB" run "$WORK/exp.toml" --runs-dir "$WORK/single$i" --set hardware.cpu_slots=1 >/dev/null 2>&1
  singles+=("$(awk -v a="$(now)" -v b="$t0" 'BEGIN { print a - b }')")
done
single=$(printf '%s\n' "${singles[@]}" | sort -n | sed -n 2p)
t0=$(now)
"$VQLAB" run "$WORK/exp.toml" --runs-dir "$WORK/many" --set hardware.cpu_slots="$SLOTS" \
  --sweep train.seed="$(seq -s, 0 31)" >/dev/null 2>&1
many=$(awk -v a="$(now)" -v b="$t0" 'BEGIN { print a - b }')
python3 - "$single" "$many" "$SLOTS" <<'PY'
import sys
single, many, s = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
ideal = 32 / s * single
print(f"one run: {single:.2f}s (median of 3); 32 runs on {s} slots: {many:.2f}s; "
      f"ideal 32/{s} x one run = {ideal:.2f}s; ratio {many / ideal:.3f}")
PY
