#!/usr/bin/env bash
# Logging overhead: the quickstart's VQ-VAE (K = 512) trained with train metrics at the
# default cadence (log_every = 50: a host sync, Parquet rows and TensorBoard events every 50
# steps) against logging off (log_every = 0), alternating A/B for several rounds in one
# invocation. Compares run.train_seconds from summary.json: the time in training steps,
# eval and checkpoints excluded (both arms evaluate and checkpoint only at the end).
#
#   bash scripts/bench_logging.sh            # ROUNDS=4 STEPS=300 by default
#   ROUNDS=6 STEPS=500 bash scripts/bench_logging.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-4}
STEPS=${STEPS:-300}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/vqlab-target}
cargo build --release --locked --quiet
VQLAB="$CARGO_TARGET_DIR/release/vqlab"
DATASET=fashion-mnist
[ -d /usr/share/datasets/fashion-mnist ] || DATASET=synthetic
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

run_arm() { # name log_every
  "$VQLAB" run experiments/quickstart.toml --runs-dir "$WORK" \
    --set experiment.name="$1" --set data.dataset=$DATASET --set data.path= \
    --set model.variant=vqvae --set quantizer.codebook_size=512 \
    --set train.steps="$STEPS" --set train.log_every="$2" \
    --set train.eval_every=1000000 --set train.checkpoint_every=1000000 \
    --set eval.fid=false >/dev/null 2>"$WORK/$1.err" || { cat "$WORK/$1.err"; exit 1; }
  python3 -c 'import json,glob,sys; print(json.load(open(glob.glob(sys.argv[1] + "/*/summary.json")[0]))["run.train_seconds"])' "$WORK/$1"
}

echo "logging overhead: $DATASET, quickstart VQ-VAE K=512, $STEPS steps, $ROUNDS alternating rounds"
on=(); off=()
for r in $(seq 1 "$ROUNDS"); do
  a=$(run_arm "on-$r" 50)
  b=$(run_arm "off-$r" 0)
  on+=("$a"); off+=("$b")
  printf 'round %d: log_every=50 %.2fs   log_every=0 %.2fs\n' "$r" "$a" "$b"
done
python3 - "${on[*]}" "${off[*]}" <<'PY'
import statistics, sys
on = [float(x) for x in sys.argv[1].split()]
off = [float(x) for x in sys.argv[2].split()]
m_on, m_off = statistics.median(on), statistics.median(off)
print(f"median train seconds: logging {m_on:.3f}, off {m_off:.3f}; overhead {100 * (m_on / m_off - 1):+.2f}%")
PY
