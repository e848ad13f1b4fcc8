#!/usr/bin/env bash
# Train experiments/learning_check.toml (4 runs, ~3 minutes on 2 CPU cores) and check the
# learning bar of issue "Models and training" against the runs' summary.json files.
#   bash scripts/learning_check.sh [RUNS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-runs}"
bin="${CARGO_TARGET_DIR:-target}/release/vqlab"
cargo build --release --locked -q
"$bin" run experiments/learning_check.toml --runs-dir "$runs" || true
python3 - "$runs/learning-check" <<'PY'
import glob, json, sys
runs = {}
for f in glob.glob(sys.argv[1] + "/*/summary.json"):
    s = json.load(open(f))
    runs[(s["quantizer.kind"], s["quantizer.codebook_size"], s["quantizer.init"])] = s
def show(key):
    s = runs[key]
    return f'{key}: rec_mse {s["eval/rec_mse"]:.5f} usage {s["eval/usage"]:.3f} perplexity {s["eval/perplexity"]:.1f} ({s["train/img_per_s"]:.0f} img/s)'
for k in sorted(runs):
    print(show(k))
checks = [
    ("vq K=256 rec_mse <= 0.02", runs[("vq", 256, "random")]["eval/rec_mse"] <= 0.02),
    ("ema K=512 kmeans+restart usage >= 0.9", runs[("ema", 512, "kmeans")]["eval/usage"] >= 0.9),
    ("ema K=512 kmeans+restart rec_mse <= 0.012", runs[("ema", 512, "kmeans")]["eval/rec_mse"] <= 0.012),
    ("K=1024 kmeans+restart usage > random init usage", runs[("ema", 1024, "kmeans")]["eval/usage"] > runs[("ema", 1024, "random")]["eval/usage"]),
]
failed = 0
for name, ok in checks:
    print(("PASS " if ok else "FAIL ") + name)
    failed += not ok
sys.exit(1 if failed else 0)
PY
