#!/usr/bin/env bash
# The test command (README "Run the tests"; CI calls this via .ci/run).
# Fresh machine: creates .venv, installs the project with its test extra (torch pinned
# to the CPU build so pip never pulls a multi-GB CUDA build), then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# The suite runs on every core the process may use (pytest-xdist; on CI's 2 cores in about
# half the serial time). Serially instead when the caller picks the workers (-n 0 runs in one
# process) or selects the real-vLLM tests, which start servers sized for the whole machine.
# "logical", not "auto": with psutil installed, auto counts physical cores, one worker where
# a VM's two vCPUs are one core's hyperthreads.
parallel=(-n logical --dist worksteal)
prev=""
for arg in "$@"; do
  case "$arg" in
    -n*|--numprocesses*|-pno:xdist|no:xdist) parallel=() ;;
  esac
  # The marker expression: "-m EXPR", or "-mEXPR" as pytest also reads it.
  expr=""
  if [ "$prev" = "-m" ]; then expr="$arg"; elif [[ "$arg" == -m?* ]]; then expr="${arg#-m}"; fi
  if [[ "$expr" == *vllm* && "$expr" != *"not vllm"* ]]; then parallel=(); fi
  prev="$arg"
done
if [ -n "${VLLM_LAB_PRINT_PYTEST_ARGS:-}" ]; then
  # pytest's arguments, one per line, and nothing run or installed (tests/test_test_script.py)
  printf '%s\n' "${parallel[@]}" "$@"
  exit 0
fi
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  # Best effort: the HTML report's headless-browser test skips (saying why) without it.
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "note: could not install chromium; the report browser test will be skipped"
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q torch==2.13.0 -e '.[test]'
exec .venv/bin/python -m pytest "${parallel[@]}" "$@"
