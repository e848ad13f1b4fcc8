#!/usr/bin/env bash
# The whole test suite: unit tests and the integration tests (tests/it), in the one
# optimised profile vqlab uses for running too (debug-mode candle is too slow to train).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v python3 >/dev/null || { echo "python3 is needed by the test oracles: bash scripts/setup.sh --deps-only" >&2; exit 1; }
exec cargo test --release --locked "$@"
