"""Peers' routers as child processes in front of the lab's backends (benchmarks, tests).

The vLLM project's router (PyPI ``vllm-router``, a Rust binary) and SGLang's
(``sglang-router``, ``python -m sglang_router.launch_router``) are installed apart from
the lab (``python -m venv .bench-venv && .bench-venv/bin/pip install vllm-router
sglang-router``: their pinned dependencies stay out of the lab's environment). Each
class starts one on a free loopback port, waits for ``/health`` and stops it; each
maps the lab's name of a policy to the peer's flags with the parameters made
explicit, and ``LAB_MODEL`` gives the lab's model of each peer policy with the same
parameters (docs/routing-policies.md cites the peer code each one follows).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from live.transport.processes import wait_health

ROOT = Path(__file__).resolve().parents[1]
BENCH_VENV = ROOT / ".bench-venv"

#: vllm-router 0.1.17's command-line values of its cache-aware policy (also SGLang's).
CACHE_AWARE_FLAGS = {"cache_threshold": 0.3, "balance_abs_threshold": 64,
                     "balance_rel_threshold": 1.5}

#: The lab's model of each peer policy: (strategy, parameters), the peer's values made explicit.
LAB_MODEL: dict[str, tuple[str, dict[str, Any]]] = {
    "round_robin": ("round_robin", {}),
    "power_of_two": ("power_of_two", {}),
    "consistent_hash": ("consistent_hash", {"virtual_nodes": 160}),
    "cache_aware": ("cache_aware", {"preset": "vllm_router", **CACHE_AWARE_FLAGS}),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vllm_router_binary() -> str | None:
    """The ``vllm-router`` executable: ``.bench-venv``'s, else one on PATH, else None."""
    local = BENCH_VENV / "bin" / "vllm-router"
    if local.is_file():
        return str(local)
    return shutil.which("vllm-router")


def sglang_router_python() -> str | None:
    """A Python that can run ``sglang_router.launch_router`` (``.bench-venv``'s), else None."""
    py = BENCH_VENV / "bin" / "python"
    if py.is_file() and (BENCH_VENV / "bin" / "sglang-router").exists():
        return str(py)
    return None


class PeerRouter:
    """A router child process on a free loopback port; ``stop`` ends it."""

    name = "peer"

    def __init__(self, argv: list[str], port: int, log_path: Path | None = None,
                 startup_timeout_s: float = 120.0) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        out = open(log_path, "wb") if log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                     env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "error")})
        try:
            wait_health(self.url, time.monotonic() + startup_timeout_s)
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> "PeerRouter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _policy_flags(policy: str) -> list[str]:
    if policy not in LAB_MODEL:
        raise ValueError(f"peer policy {policy!r}: one of {', '.join(LAB_MODEL)}")
    flags = ["--policy", policy]
    if policy == "cache_aware":
        for key, value in CACHE_AWARE_FLAGS.items():
            flags += ["--" + key.replace("_", "-"), str(value)]
    return flags


class VllmRouter(PeerRouter):
    """``vllm-router --worker-urls ... --policy P`` (vLLM's Rust router)."""

    name = "vllm-router"

    def __init__(self, urls: list[str], policy: str, *, binary: str | None = None,
                 log_path: Path | None = None, extra: list[str] = ()) -> None:
        binary = binary or vllm_router_binary()
        if binary is None:
            raise FileNotFoundError("vllm-router is not installed: python -m venv .bench-venv && "
                                    ".bench-venv/bin/pip install vllm-router")
        port = free_port()
        argv = [binary, "--worker-urls", *urls, *_policy_flags(policy), "--host", "127.0.0.1",
                "--port", str(port), "--log-level", "error", "--max-concurrent-requests", "4096",
                "--queue-size", "4096", *extra]
        super().__init__(argv, port, log_path)


class SglangRouter(PeerRouter):
    """``python -m sglang_router.launch_router --worker-urls ... --policy P`` (SGLang's router)."""

    name = "sglang-router"

    def __init__(self, urls: list[str], policy: str, *, python: str | None = None,
                 log_path: Path | None = None, extra: list[str] = ()) -> None:
        python = python or sglang_router_python()
        if python is None:
            raise FileNotFoundError("sglang-router is not installed: python -m venv .bench-venv && "
                                    ".bench-venv/bin/pip install sglang-router")
        port = free_port()
        argv = [python, "-m", "sglang_router.launch_router", "--worker-urls", *urls,
                *_policy_flags(policy), "--host", "127.0.0.1", "--port", str(port),
                "--log-level", "error", *extra]
        super().__init__(argv, port, log_path)


def python_executable() -> str:
    return sys.executable
