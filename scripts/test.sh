#!/usr/bin/env bash
# The test command (README "Run the tests"; CI calls this via .ci/run).
# Fresh machine: creates .venv, installs the project with its test extra (torch pinned
# to the CPU build so pip never pulls a multi-GB CUDA build), then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  # Best effort: the HTML report's headless-browser test skips (saying why) without it.
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "note: could not install chromium; the report browser test will be skipped"
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q torch==2.13.0 -e '.[test]'
exec .venv/bin/python -m pytest "$@"
