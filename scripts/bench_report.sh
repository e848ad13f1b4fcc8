#!/usr/bin/env bash
# `vqlab report` over N run dirs (default 10,000): one real tiny run is trained, then cloned
# into N run dirs (its real status.json, config.toml and summary.json, with the codebook size,
# variant, seed and metrics varied: 8 K × 2 variants × N/16 seeds). Times a LaTeX table over
# them ROUNDS times (the first with the page cache as the generator left it) and prints each
# time and the median. The goal is under 2 s for 10,000 run dirs.
#
#   bash scripts/bench_report.sh
#   RUNS=50000 ROUNDS=3 bash scripts/bench_report.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-10000}
ROUNDS=${ROUNDS:-5}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/vqlab-target}
cargo build --release --locked --quiet
VQLAB="$CARGO_TARGET_DIR/release/vqlab"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cat >"$WORK/exp.toml" <<TOML
[experiment]
name = "template"
[data]
dataset = "synthetic"
train_images = 256
eval_images = 64
[model]
hidden_channels = 16
res_channels = 8
res_blocks = 1
[quantizer]
codebook_size = 32
embed_dim = 8
[train]
steps = 4
batch_size = 16
log_every = 2
eval_every = 4
checkpoint_every = 4
[eval]
fid = false
sample_images = 4
TOML
(cd "$WORK" && "$VQLAB" -q run exp.toml >/dev/null)
template=$(ls -d "$WORK"/runs/template/*/)
python3 - "$template" "$WORK/sweep" "$RUNS" <<'PY'
import json, os, random, sys
template, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
status = json.load(open(os.path.join(template, "status.json")))
summary = json.load(open(os.path.join(template, "summary.json")))
config = open(os.path.join(template, "config.toml")).read()
rng = random.Random(0)
os.makedirs(out)
for i in range(n):
    k = 32 << (i % 8)
    variant = ("vqvae", "vqgan")[(i // 8) % 2]
    seed = i // 16
    run_id = f"{i:08x}"
    d = os.path.join(out, f"{variant}-K{k}-s{seed}-{run_id}")
    os.makedirs(d)
    s = dict(summary)
    s.update({"quantizer.codebook_size": k, "model.variant": variant, "train.seed": seed,
              "loss.recon": "mse" if variant == "vqvae" else "l1", "run.dir": os.path.basename(d), "run.id": run_id,
              "eval/rec_mse": rng.uniform(0.005, 0.02), "eval/psnr": rng.uniform(17, 25),
              "eval/usage": rng.uniform(0, 1), "eval/perplexity": rng.uniform(1, k)})
    json.dump(s, open(os.path.join(d, "summary.json"), "w"), indent=2)
    json.dump(status, open(os.path.join(d, "status.json"), "w"), indent=2)
    open(os.path.join(d, "config.toml"), "w").write(config)
PY
echo "$RUNS run dirs in $WORK/sweep ($(du -sh "$WORK/sweep" | cut -f1)), $(nproc) cores"
times=()
for r in $(seq "$ROUNDS"); do
  start=$EPOCHREALTIME
  "$VQLAB" -q report "$WORK/sweep" --rows quantizer.codebook_size --cols model.variant \
    --metrics eval/rec_mse,eval/psnr,eval/usage,eval/perplexity --format latex --out "$WORK/table.tex"
  t=$(awk "BEGIN { print $EPOCHREALTIME - $start }")
  times+=("$t")
  printf 'round %d: %.3f s\n' "$r" "$t"
done
median=$(printf '%s\n' "${times[@]}" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}')
printf 'median over %d rounds: %.3f s for %d run dirs (goal: < 2 s for 10,000)\n' "$ROUNDS" "$median" "$RUNS"
grep -c 'pm' "$WORK/table.tex" | xargs printf 'table rows with mean ± std: %s\n'
