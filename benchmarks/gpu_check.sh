#!/usr/bin/env bash
# The GPU path in one prepared run (see benchmarks/gpu_check.py for the parts and the record).
#
#   bash benchmarks/gpu_check.sh              # on a CUDA machine; stopped after GPU_CHECK_TIMEOUT s (480)
#   bash benchmarks/gpu_check.sh --dry-run    # the same parts on the CPU at minimal size, no time limit
#
# Python: $PYTHON, else the repository's .venv (make install), else python3. On a GPU machine that
# interpreter needs a CUDA build of torch (the Makefile installs the CPU one).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
limit="${GPU_CHECK_TIMEOUT:-480}"
for a in "$@"; do [ "$a" = "--dry-run" ] && limit=0; done
if [ "$limit" = "0" ]; then
  exec "$PY" benchmarks/gpu_check.py "$@"
fi
exec timeout --signal=INT --kill-after=30 "$limit" "$PY" benchmarks/gpu_check.py "$@"
