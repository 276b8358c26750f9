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
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from live.transport.processes import ChildStartError, die_with_parent, wait_health

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
    """A router child process on a free loopback port; ``stop`` ends it.

    As ``live.transport.processes`` does for the lab's own children, the router
    leads a new process group (``stop`` signals every helper it started) and gets
    ``PR_SET_PDEATHSIG`` on Linux, so it dies with this process even when this one
    is killed without running its cleanup.
    """

    name = "peer"

    def __init__(self, argv: list[str], port: int, log_path: Path | None = None,
                 startup_timeout_s: float = 120.0) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self._tmp: Path | None = None
        if log_path is None:  # keep what it says: a failed start reports it
            fd, name = tempfile.mkstemp(prefix="peer-router-", suffix=".log")
            os.close(fd)  # reopened below; only the name is kept
            self._tmp = log_path = Path(name)
        self.log_path = log_path
        with open(log_path, "wb") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "error")},
                start_new_session=True,
                preexec_fn=die_with_parent if sys.platform.startswith("linux") else None)
        try:
            self._wait(startup_timeout_s)
        except BaseException:
            self.stop()
            raise

    def _wait(self, timeout_s: float) -> None:
        """Until ``/health`` answers; an early exit (a port taken meanwhile, a bad flag)
        is reported at once with the end of its log, not after the timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            code = self.proc.poll()
            if code is not None:
                tail = self.log_path.read_bytes()[-2000:].decode("utf-8", "replace")
                raise RuntimeError(f"{self.name} exited with code {code} before answering "
                                   f"/health; its log ends:\n{tail}")
            try:
                wait_health(self.url, min(deadline, time.monotonic() + 1.0))
                return
            except ChildStartError:
                if time.monotonic() > deadline:
                    raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)  # the leader of a new session: pid == group id
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self) -> None:
        """SIGTERM the router's process group, SIGKILL it after 10 s. Idempotent."""
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait()
        self._signal_group(signal.SIGKILL)  # helpers left behind by an exited leader
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None

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
        flags = _policy_flags(policy)

        def argv(port: int) -> list[str]:
            return [binary, "--worker-urls", *urls, *flags, "--host", "127.0.0.1",
                    "--port", str(port), "--log-level", "error", "--max-concurrent-requests",
                    "4096", "--queue-size", "4096", *_metrics_port(), *extra]
        _start_on_free_port(self, argv, log_path)


class SglangRouter(PeerRouter):
    """``python -m sglang_router.launch_router --worker-urls ... --policy P`` (SGLang's router)."""

    name = "sglang-router"

    def __init__(self, urls: list[str], policy: str, *, python: str | None = None,
                 log_path: Path | None = None, extra: list[str] = ()) -> None:
        python = python or sglang_router_python()
        if python is None:
            raise FileNotFoundError("sglang-router is not installed: python -m venv .bench-venv && "
                                    ".bench-venv/bin/pip install sglang-router")
        flags = _policy_flags(policy)

        def argv(port: int) -> list[str]:
            return [python, "-m", "sglang_router.launch_router", "--worker-urls", *urls, *flags,
                    "--host", "127.0.0.1", "--port", str(port), "--log-level", "error",
                    *_metrics_port(), *extra]
        _start_on_free_port(self, argv, log_path)


def _metrics_port() -> list[str]:
    """Both routers serve Prometheus on port 29000 of every interface by default: two at
    once collide (the second panics). Each gets its own free port on loopback."""
    return ["--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port())]


def _start_on_free_port(router: PeerRouter, argv, log_path: Path | None, attempts: int = 3) -> None:
    """Start on a free port; on another if it exits first (the port was taken meanwhile)."""
    for attempt in range(attempts):
        port = free_port()
        try:
            PeerRouter.__init__(router, argv(port), port, log_path)
            return
        except RuntimeError:
            if attempt == attempts - 1:
                raise


def python_executable() -> str:
    return sys.executable
