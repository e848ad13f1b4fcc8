#!/usr/bin/env bash
# The GPU check: one short script that fits one call on a GPU machine (about 6 minutes on an
# H200; at most 8), every result in the folder it is given.
#
#   bash scripts/gpu_check.sh OUT_DIR          # on the GPU machine, with dist/cuda/ carried
#   bash scripts/gpu_check.sh --dry OUT_DIR    # on a CPU machine: everything but the GPU
#
# On the GPU machine it needs what scripts/build_cuda.sh packed (dist/cuda/vqlab.xz, env.sh)
# and a python3 with PyTorch built for CUDA; no Rust and no network. It
#   0. unpacks the build and prints nvidia-smi;
#   a. trains the same 200-step run (the benchmark model on synthetic shapes, FID-style scores
#      on) on the CPU and on the GPU and compares their final losses and eval metrics;
#   b. times `vqlab bench experiments/bench_step.toml` on the GPU against
#      scripts/bench/torch_step.py --device cuda, in alternating rounds, for both variants;
#   c. runs a 4-run sweep with hardware.runs_per_gpu = "auto" and prints each run's peak
#      memory and wall time, against the same run trained alone;
#   d. writes everything to OUT_DIR/summary.json.
# The dry mode runs the same steps on the CPU: the "GPU" run of (a) uses candle's reference
# ops (VQLAB_REFERENCE_OPS=1, the code a GPU runs), (b) times the CPU, and (c) packs onto one
# fake GPU (VQLAB_FAKE_GPUS). ROUNDS, STEPS and RUN_STEPS shorten it.
set -uo pipefail
cd "$(dirname "$0")/.."
mode=gpu
if [ "${1:-}" = --dry ]; then mode=dry; shift; fi
[ $# -eq 1 ] || { echo "usage: $0 [--dry] OUT_DIR" >&2; exit 2; }
mkdir -p "$1" && OUT=$(cd "$1" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
log() { echo "[$(date -u +%T)] $*" | tee -a "$OUT/log.txt" >&2; }
failures=()
fail() { failures+=("$1"); log "FAILED: $1"; }

if [ "$mode" = gpu ]; then
  ROUNDS=${ROUNDS:-3} STEPS=${STEPS:-30} RUN_STEPS=${RUN_STEPS:-200}
  [ -f dist/cuda/vqlab.xz ] || { echo "error: dist/cuda/vqlab.xz missing (bash scripts/build_cuda.sh)" >&2; exit 2; }
  xz -dc dist/cuda/vqlab.xz > "$WORK/vqlab" && chmod +x "$WORK/vqlab"
  # shellcheck source=/dev/null
  source dist/cuda/env.sh
  VQLAB="$WORK/vqlab"
  PY=${TORCH_PYTHON:-python3}
  DEV=cuda
  nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || fail "nvidia-smi"
else
  ROUNDS=${ROUNDS:-2} STEPS=${STEPS:-5} RUN_STEPS=${RUN_STEPS:-40}
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/vqlab-target}
  cargo build --release --locked --quiet || exit 1
  VQLAB="$CARGO_TARGET_DIR/release/vqlab"
  source scripts/torch_venv.sh
  PY=$TORCH_PYTHON
  DEV=cpu
  echo "dry run on $(hostname): no GPU" > "$OUT/nvidia-smi.txt"
fi
cat "$OUT/nvidia-smi.txt" >&2
"$VQLAB" --version > "$OUT/vqlab-version.txt" 2>&1 || fail "the vqlab binary does not start: $(cat "$OUT/vqlab-version.txt")"
log "mode $mode: $(cat "$OUT/vqlab-version.txt"), torch: $("$PY" -c 'import torch; print(torch.__version__, torch.cuda.is_available())' 2>&1)"

exp=experiments/bench_step.toml
# The run of (a) and (c): the benchmark model on synthetic shapes, FID-style scores on.
run_sets=(--set train.steps="$RUN_STEPS" --set train.log_every=$((RUN_STEPS / 4)) --set train.eval_every="$RUN_STEPS"
  --set train.checkpoint_every="$RUN_STEPS" --set eval.fid=true --set eval.kid_subsets=20 --set eval.kid_subset_size=200)

# a. The same run on the CPU and on the GPU.
log "a. $RUN_STEPS steps on the CPU and on $DEV"
"$VQLAB" -q run "$exp" --runs-dir "$WORK/cpu" "${run_sets[@]}" --set hardware.device=cpu > "$OUT/a-cpu.txt" 2>&1 \
  || fail "the CPU run"
if [ "$mode" = gpu ]; then
  "$VQLAB" -q run "$exp" --runs-dir "$WORK/gpu" "${run_sets[@]}" --set hardware.device=cuda > "$OUT/a-gpu.txt" 2>&1 \
    || fail "the GPU run"
else
  VQLAB_REFERENCE_OPS=1 "$VQLAB" -q run "$exp" --runs-dir "$WORK/gpu" "${run_sets[@]}" --set hardware.device=cpu \
    > "$OUT/a-gpu.txt" 2>&1 || fail "the reference-ops run"
fi
for side in cpu gpu; do
  for f in "$WORK/$side"/bench-step/*/{summary.json,status.json,train.log}; do
    [ -f "$f" ] && cp "$f" "$OUT/a-$side-$(basename "$f")"
  done
done

# b. vqlab bench against PyTorch eager on the same device, alternating rounds.
log "b. bench: $ROUNDS alternating rounds of $STEPS steps on $DEV"
: > "$OUT/b-bench.jsonl"
for variant in vqvae vqgan; do
  for r in $(seq 1 "$ROUNDS"); do
    v=$("$VQLAB" -q bench "$exp" --set model.variant="$variant" --set hardware.device="$DEV" \
      --steps "$STEPS" --warmup 5 --json 2>>"$OUT/b-errors.txt") || fail "vqlab bench $variant round $r"
    t=$("$PY" scripts/bench/torch_step.py --variant "$variant" --device "$DEV" --threads "$(nproc)" \
      --steps "$STEPS" --warmup 5 2>>"$OUT/b-errors.txt") || fail "torch_step $variant round $r"
    printf '{"variant": "%s", "round": %d, "vqlab": %s, "pytorch": %s}\n' "$variant" "$r" "${v:-null}" "${t:-null}" \
      >> "$OUT/b-bench.jsonl"
  done
done

# c. Four runs packed by memory, and one of them alone.
log "c. 4 runs with runs_per_gpu = \"auto\", and one alone"
# bench_step.toml says hardware.device = "cpu"; the packed sweep needs the GPUs (dry: a fake one,
# seen by the scheduler, the workers training on the CPU).
pack_env=()
pack_device=cuda
if [ "$mode" = dry ]; then
  pack_env=(VQLAB_FAKE_GPUS=1 VQLAB_FAKE_GPU_MEMORY_MIB=16384)
  pack_device=auto
fi
s=$(date +%s.%N)
env "${pack_env[@]}" "$VQLAB" run "$exp" --runs-dir "$WORK/packed" "${run_sets[@]}" --set eval.fid=false \
  --set hardware.device="$pack_device" --set hardware.runs_per_gpu='"auto"' --set 'sweep.seeds=[0, 1, 2, 3]' \
  > "$OUT/c-packed.txt" 2>&1 || fail "the packed sweep"
packed_wall=$(python3 -c "import time; print(time.time() - $s)")
s=$(date +%s.%N)
env "${pack_env[@]}" "$VQLAB" run "$exp" --runs-dir "$WORK/alone" "${run_sets[@]}" --set eval.fid=false \
  --set hardware.device="$pack_device" > "$OUT/c-alone.txt" 2>&1 || fail "the run alone"
alone_wall=$(python3 -c "import time; print(time.time() - $s)")
for d in "$WORK"/packed/bench-step/* "$WORK"/alone/bench-step/*; do
  [ -f "$d/status.json" ] && cp "$d/status.json" "$OUT/c-$(basename "$(dirname "$(dirname "$d")")")-$(basename "$d").status.json"
done

# d. The summary.
python3 - "$OUT" "$mode" "$packed_wall" "$alone_wall" "${failures[@]}" <<'PY'
import glob, json, os, statistics, sys
out, mode, packed_wall, alone_wall, failures = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), sys.argv[5:]
def load(p):
    try:
        return json.load(open(p))
    except Exception:
        return None
summary = {"mode": mode, "failures": failures}
cpu, gpu = load(f"{out}/a-cpu-summary.json"), load(f"{out}/a-gpu-summary.json")
gst = load(f"{out}/a-gpu-status.json")
a = {"gpu_status_device": gst and gst.get("device"), "metrics": {}}
if cpu and gpu:
    for m in ["eval/rec_mse", "eval/psnr", "eval/usage", "eval/perplexity", "eval/rfid", "val/rec_mse", "train/img_per_s"]:
        if m in cpu and m in gpu:
            rel = abs(gpu[m] - cpu[m]) / max(abs(cpu[m]), 1e-12)
            a["metrics"][m] = {"cpu": cpu[m], "gpu": gpu[m], "relative_difference": rel}
    cst = load(f"{out}/a-cpu-status.json")
    a["final_train_rec_loss"] = {"cpu": cst and cst.get("loss"), "gpu": gst and gst.get("loss")}
    rec = a["metrics"].get("eval/rec_mse", {}).get("relative_difference")
    a["agree"] = rec is not None and rec <= 0.10
summary["a_cpu_vs_gpu"] = a
rows = [json.loads(l) for l in open(f"{out}/b-bench.jsonl") if l.strip()]
b = {}
for variant in ("vqvae", "vqgan"):
    v = [r["vqlab"]["img_per_s"] for r in rows if r["variant"] == variant and r["vqlab"]]
    t = [r["pytorch"]["img_per_s"] for r in rows if r["variant"] == variant and r["pytorch"]]
    if v and t:
        ratios = [x / y for x, y in zip(v, t)]
        b[variant] = {"vqlab_img_per_s": v, "pytorch_img_per_s": t, "median_vqlab": statistics.median(v),
                      "median_pytorch": statistics.median(t), "ratio_of_medians": statistics.median(v) / statistics.median(t),
                      "round_ratios": [min(ratios), max(ratios)]}
summary["b_bench"] = b
c = {"packed_wall_s": packed_wall, "alone_wall_s": alone_wall, "runs": []}
for p in sorted(glob.glob(f"{out}/c-*.status.json")):
    st = load(p) or {}
    c["runs"].append({"file": os.path.basename(p), "state": st.get("state"), "slot": st.get("slot"), "device": st.get("device"),
                      "peak_memory_mib": st.get("peak_memory_mib"), "wall_s": st.get("end_time", 0) - st.get("start_time", 0)})
summary["c_packing"] = c
json.dump(summary, open(f"{out}/summary.json", "w"), indent=2)
print(json.dumps(summary, indent=2))
PY
log "done: $OUT/summary.json (${#failures[@]} failures)"
[ ${#failures[@]} -eq 0 ]
