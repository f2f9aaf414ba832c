#!/usr/bin/env bash
# GPU check of the extraction engine: forward-only vs `radstore extract` images/s per encoder.
# From a fresh clone: builds .venv with `make venv` when it is missing, then runs
# benchmarks/gpu_check.py with the arguments given (see its --help). Without CUDA, or with
# --reduced, it runs the reduced CPU mode and exits 0; on CUDA it exits 1 when an encoder misses
# the target. Results JSON goes to $OUT when set, else benchmarks/results.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
    make venv
fi
exec .venv/bin/python -m benchmarks.gpu_check "$@"
