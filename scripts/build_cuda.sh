#!/usr/bin/env bash
# Build vqlab with `--features cuda` on a CPU-only Debian machine, from nothing but what the
# package registries serve, and pack it to carry to a GPU machine.
#
#   bash scripts/build_cuda.sh           # build, strip and pack into dist/cuda/ (git-ignored)
#   bash scripts/build_cuda.sh --check   # type-check the cuda feature only (what .ci/run does)
#
# - NVIDIA's CUDA toolkit pieces come from PyPI into a venv under ~/.cache/vqlab-cuda
#   (VQLAB_CUDA_CACHE): nvcc and ptxas, cicc (nvvm), the headers, libcudart. All pinned to one
#   CUDA version (VQLAB_CUDA_VERSION, default 13.0, the GPU machine's driver): an nvvm newer
#   than its ptxas writes PTX that ptxas rejects, and PTX newer than the driver will not load.
# - No wheel carries the driver's libcuda, and cuBLAS's is hundreds of MB. The link uses
#   stubs instead, as the toolkit's own lib/stubs do: one empty function per name that cudarc
#   declares, in libraries with the real SONAMEs, put beside the wheel's libcudart (only the
#   link sees them; nothing loads them at run time). At run time the binary finds the real
#   libraries (the driver's libcuda, cuBLAS/cuRAND/NVRTC of the GPU machine's Python
#   environment); dist/cuda/env.sh points LD_LIBRARY_PATH at them.
# - CUDA_COMPUTE_CAP (default 90: H100/H200) picks the PTX target of candle's kernels. PTX
#   for 80 also runs on 90 (JIT), at a start-up cost: CUDA_COMPUTE_CAP=80 for A100s.
#
# It builds in the same target dir as the CPU build (deps without CUDA are shared), then
# restores the CPU binary there, so `target/release/vqlab` stays the one that runs here.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=build
case "${1:-}" in
  --check) mode=check ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac
CACHE=${VQLAB_CUDA_CACHE:-$HOME/.cache/vqlab-cuda}
CUDA=${VQLAB_CUDA_VERSION:-13.0}
major=${CUDA%%.*}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/vqlab-target}
OUT=${VQLAB_CUDA_OUT:-dist/cuda}
t0=$(date +%s)

# 1. The toolkit pieces, pinned to one CUDA version.
venv="$CACHE/venv-$CUDA"
wheels=(nvidia-cuda-nvcc nvidia-cuda-runtime nvidia-cuda-crt nvidia-cuda-cccl nvidia-nvvm)
stamp="$venv/.vqlab-wheels"
if [ "$(cat "$stamp" 2>/dev/null)" != "${wheels[*]} $CUDA" ]; then
  echo "installing CUDA $CUDA toolkit wheels into $venv: ${wheels[*]}" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "${wheels[@]/%/==$CUDA.*}"
  echo "${wheels[*]} $CUDA" > "$stamp"
fi
cu=$("$venv/bin/python" -c "import nvidia, os; print(os.path.join(nvidia.__path__[0], 'cu$major'))")
[ -x "$cu/bin/nvcc" ] || { echo "error: no nvcc under $cu after installing ${wheels[*]}" >&2; exit 1; }
export PATH="$cu/bin:$PATH" CUDA_ROOT="$cu" CUDA_PATH="$cu" CUDA_HOME="$cu"
echo "CUDA $("$cu/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p') at $cu, compute capability $CUDA_COMPUTE_CAP" >&2

if [ "$mode" = check ]; then
  cargo check --release --locked --features cuda
  echo "cargo check --features cuda: ok ($(( $(date +%s) - t0 )) s)" >&2
  exit 0
fi

# 2. Link stubs for the libraries that have no wheel (or too large a one), from the names
#    cudarc declares; libcudart.so for the linker, next to the wheel's libcudart.so.<major>.
cudarc=$(cargo metadata --locked --format-version 1 --features cuda 2>/dev/null \
  | python3 -c "import json,sys; print(next(p['manifest_path'] for p in json.load(sys.stdin)['packages'] if p['name']=='cudarc').rsplit('/',1)[0])")
# The stubs go next to libcudart in $CUDA_ROOT/lib, the one directory the link searches (what
# cudarc's build script passes on); their sources stay in the cache.
stubs="$cu/lib"
src_dir="$CACHE/stubs-src"
mkdir -p "$src_dir"
for spec in "driver cuda 1" "nvrtc nvrtc $major" "curand curand 10" "cublas cublas $major" "cublaslt cublasLt $major"; do
  set -- $spec
  src="$cudarc/src/$1/sys/mod.rs"
  names=$(grep -oE '^pub unsafe fn [A-Za-z0-9_]+' "$src" | awk '{print $4}' | sort -u)
  [ -n "$names" ] || { echo "error: no functions found in $src" >&2; exit 1; }
  c="$src_dir/lib$2.c"
  printf 'void %s(void) {}\n' $names > "$c"
  gcc -shared -fPIC -o "$stubs/lib$2.so" -Wl,-soname,"lib$2.so.$3" "$c"
  echo "stub lib$2.so (SONAME lib$2.so.$3): $(echo "$names" | wc -l) functions" >&2
done
ln -sf "$(ls "$cu"/lib/libcudart.so.$major* | head -1)" "$cu/lib/libcudart.so"

# 3. Build (RUSTFLAGS stay as they are, or every crate would be rebuilt), keep the binary,
#    restore the CPU binary.
cargo build --release --locked --features cuda
mkdir -p "$OUT"
strip -o "$OUT/vqlab" "$CARGO_TARGET_DIR/release/vqlab"
cargo build --release --locked --quiet
if ldd "$CARGO_TARGET_DIR/release/vqlab" | grep -q libcuda; then
  echo "error: the CPU binary was not restored in $CARGO_TARGET_DIR/release" >&2
  exit 1
fi

# 4. Pack: the binary, xz-compressed, and the script that finds CUDA's libraries at run time.
needed=$(readelf -d "$OUT/vqlab" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | tr '\n' ' ')
cat > "$OUT/env.sh" <<'EOF'
# Source this on the GPU machine, next to the unpacked vqlab: it puts the directories that hold
# the CUDA libraries vqlab needs (the driver's libcuda, and cuBLAS, cuRAND, NVRTC, cudart,
# e.g. from PyTorch's Python environment) on LD_LIBRARY_PATH.
_vqlab_dirs=""
for lib in libcuda.so.1 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13 libcudart.so.13; do
  d=$(ldconfig -p 2>/dev/null | awk -v l="$lib" '$1 == l {print $NF; exit}' | xargs -r dirname)
  if [ -z "$d" ]; then
    for root in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu \
      $(python3 -c "import nvidia, os; print(' '.join(os.path.dirname(p) for p in nvidia.__path__))" 2>/dev/null); do
      f=$(find "$root" -name "$lib" 2>/dev/null | head -1)
      if [ -n "$f" ]; then d=$(dirname "$f"); break; fi
    done
  fi
  if [ -n "$d" ]; then
    case ":$_vqlab_dirs:" in *":$d:"*) ;; *) _vqlab_dirs="$_vqlab_dirs:$d" ;; esac
  else
    echo "vqlab env.sh: $lib not found" >&2
  fi
done
export LD_LIBRARY_PATH="${_vqlab_dirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
unset _vqlab_dirs
EOF
stripped=$(stat -c %s "$OUT/vqlab")
# Only the archive stays: dist/cuda/ is what travels to a GPU machine (64 MiB at most).
xz -6 -T0 -f "$OUT/vqlab"
cat > "$OUT/BUILD.txt" <<EOF
vqlab $(git describe --always --dirty 2>/dev/null) built with --features cuda
CUDA $CUDA (PyPI wheels), compute capability $CUDA_COMPUTE_CAP, $(date -u +%Y-%m-%dT%H:%M:%SZ)
needs: $needed
EOF
size=$(stat -c %s "$OUT/vqlab.xz")
echo "packed $OUT/vqlab.xz: $((size / 1024 / 1024)) MiB ($stripped bytes stripped), needs $needed; $(( $(date +%s) - t0 )) s" >&2
[ "$size" -le $((40 * 1024 * 1024)) ] || { echo "error: $OUT/vqlab.xz is over 40 MiB" >&2; exit 1; }
