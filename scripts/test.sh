#!/usr/bin/env bash
# The whole test suite: unit tests and the integration tests (tests/it), in the one
# optimised profile vqlab uses for running too (debug-mode candle is too slow to train).
# First installs what the tests need (scripts/setup.sh --deps-only: the oracles' Python
# packages, Slurm) and, as root, starts a single-node Slurm for the Slurm tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --deps-only
started_slurm=0
if [ -z "${SLURM_CONF:-}" ] && [ "$(id -u)" -eq 0 ] && command -v slurmctld >/dev/null; then
  eval "$(bash scripts/slurm_local.sh start)"
  started_slurm=1
fi
trap 'if [ "$started_slurm" = 1 ]; then bash scripts/slurm_local.sh stop; fi' EXIT
# VQLAB_TEST_PROFILE=ci runs the same tests in the overflow-checked profile (.ci/run does).
cargo test --locked --profile "${VQLAB_TEST_PROFILE:-release}" "$@"
