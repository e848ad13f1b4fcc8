# Sourced by the scripts that compare vqlab with PyTorch: sets TORCH_PYTHON to an interpreter
# that has torch, numpy, pyarrow and safetensors, creating a virtual environment under ~/.cache once
# (VQLAB_BENCH_VENV moves it). Set TORCH_PYTHON beforehand to use an interpreter of your own;
# set PIP_INDEX_URL for another package index (PyTorch's CPU-only wheels, for example).
# PyTorch is pinned (TORCH_VERSION) so that the baseline of the speed comparisons does not move
# under them; the README's tables name the version they ran.
TORCH_VERSION=${TORCH_VERSION:-2.15.0}
if [ -z "${TORCH_PYTHON:-}" ]; then
  VENV=${VQLAB_BENCH_VENV:-$HOME/.cache/vqlab-bench-venv}
  if ! "$VENV/bin/python" -c "import torch, numpy, pyarrow, safetensors; assert torch.__version__.split('+')[0] == '$TORCH_VERSION'" 2>/dev/null; then
    echo "installing PyTorch $TORCH_VERSION, numpy and pyarrow into $VENV (once)" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
    "$VENV/bin/pip" install --quiet "torch==$TORCH_VERSION" numpy pyarrow safetensors
  fi
  TORCH_PYTHON="$VENV/bin/python"
fi
