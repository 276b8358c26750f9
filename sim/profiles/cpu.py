"""A CPU as a device for derived profiles: its matmul throughput and memory bandwidth, measured.

CPUs have no datasheet figure that predicts what one vLLM-CPU worker achieves
(vectorisation, core count, cache sizes, the oneDNN kernels vLLM calls), so the
"datasheet" of a CPU device is a micro-benchmark of the two operations a
vLLM-CPU float32 step is made of, on the threads one instance gets:

- **matmul throughput**: ``torch.matmul`` of a (512 x 1024) by (1024 x 2048)
  float32 matrix — a prefill chunk through a projection of the shipped CPU
  shapes' size — FLOPs per second, best of repeated runs;
- **memory bandwidth**: ``torch.mv`` of a 256 MiB float32 matrix by a vector — a
  decode step streaming a weight matrix it cannot cache — bytes per second, best
  of repeated runs.

Both run in this process with ``torch.set_num_threads(threads)``. On a shared
machine other work lowers both; ``loadavg`` is recorded beside the figures, and
``python -m sim.profiles measure-cpu`` is the command to repeat on a quiet one.
"""
from __future__ import annotations

import os
import platform
import time

GEMM_SHAPE = (512, 1024, 2048)
GEMV_BYTES = 256 << 20


def _best_rate(fn, work: float, seconds: float) -> float:
    fn()  # warm up
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best = max(best, work / dt)
    return best


def _clock_mhz() -> float:
    try:
        with open("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq") as fh:
            return int(fh.read()) / 1000.0
    except OSError:
        pass
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("cpu mhz"):
                    return float(line.split(":")[1])
    except (OSError, ValueError):
        pass
    return 1000.0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def measure_cpu(threads: int = 1, memory_gib: float = 1.0, seconds: float = 2.0) -> dict:
    """A device JSON object (``sim.profiles.hardware.device_from_dict``) for this CPU."""
    import torch

    before = os.getloadavg()
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        m, k, n = GEMM_SHAPE
        a, b = torch.randn(m, k), torch.randn(k, n)
        flops = _best_rate(lambda: torch.matmul(a, b), 2.0 * m * k * n, seconds)
        rows = GEMV_BYTES // (4 * 4096)
        w, x = torch.randn(rows, 4096), torch.randn(4096)
        bandwidth = _best_rate(lambda: torch.mv(w, x), float(rows * 4096 * 4), seconds)
    finally:
        torch.set_num_threads(old_threads)
    name = _cpu_name()
    return {
        "name": f"cpu-{threads}t",
        "description": f"{threads} thread(s) of {name} (measured)",
        "fp32_tflops": round(flops / 1e12, 6),
        "bf16_tflops": 0.0,
        "fp8_tflops": 0.0,
        "memory_gb": memory_gib,
        "memory_bw_gbs": round(bandwidth / 1e9, 3),
        "interconnect_gbs": 0.0,
        "interconnect": "none",
        "clock_mhz": _clock_mhz(),
        "measured": True,
        "sources": {
            "fp32_tflops": f"torch.matmul {m}x{k} by {k}x{n} float32, best of {seconds:g} s, {threads} thread(s)",
            "memory_bw_gbs": f"torch.mv of a {GEMV_BYTES >> 20} MiB float32 matrix, best of {seconds:g} s",
            "memory_gb": "the KV-cache space given to the instance (VLLM_CPU_KVCACHE_SPACE)",
            "loadavg": f"before {before}, after {os.getloadavg()} (figures are lower on a busy machine)",
            "machine": f"{platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        },
        "notes": ["measured on this machine, not a datasheet: repeat with python -m sim.profiles measure-cpu"],
    }
