"""Real vLLM-CPU instances for ``--spawn-vllm``, started in process through ``calibrate.serve``.

Each backend of the validated fleet gets one ``VllmServer``: the random-weight
Llama shape its CPU profile was measured on, pinned to one core, with the
engine limits of its scenario group. ``--serve-args`` are ``python -m calibrate
serve`` options (parsed by that command's own parser, so they mean the same in
both places) and win over the ones chosen here. Every server runs in its own
process group and is stopped on the way out, Ctrl-C and errors included; its
leader also dies with this process (``calibrate.process``), so nothing outlives
a validation.

vLLM runs with ``VLLM_SERVER_DEV_MODE=1`` so it serves ``POST /reset_prefix_cache``:
every strategy then starts from a cold prefix cache, as in the simulator.
"""
from __future__ import annotations

import contextlib
import io
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from calibrate.modeldir import shape_for_served
from calibrate.cli import build_parser, serve_spec
from calibrate.serve import CPU_BLOCK_SIZE, ServeError, ServeSpec, VllmServer

#: vLLM-CPU's attention kernel needs KV blocks of a multiple of 32 tokens; validation uses 32.
VLLM_CPU_BLOCK_SIZE = CPU_BLOCK_SIZE
#: vLLM-CPU starts in 45-135 s on a busy 2-core machine; several start at once.
STARTUP_TIMEOUT_S = 900.0
#: What vLLM needs to serve ``POST /reset_prefix_cache``.
DEV_MODE = {"VLLM_SERVER_DEV_MODE": "1"}


class ServeArgsError(ValueError):
    """``--serve-args`` that ``python -m calibrate serve`` does not accept."""


@dataclass(frozen=True)
class VllmInstance:
    """One vLLM server: a random-weight model shape on some cores, plus ``calibrate serve`` options."""

    shape: str
    cores: str
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    serve_args: Sequence[str] = field(default_factory=tuple)

    def argv(self) -> list[str]:
        """The ``calibrate serve`` options of this instance (``serve_args`` last, so they win)."""
        return ["--shape", self.shape, "--port", "0", "--cores", self.cores,
                "--block-size", str(VLLM_CPU_BLOCK_SIZE),
                "--max-num-seqs", str(self.max_num_seqs),
                "--max-num-batched-tokens", str(self.max_num_batched_tokens),
                *self.serve_args]

    def spec(self) -> tuple[ServeSpec, float]:
        """The server's spec and startup timeout; ``ServeArgsError`` names a bad option."""
        args = parse_serve_args(self.argv())
        try:
            spec = serve_spec(args)
        except ValueError as exc:
            raise ServeArgsError(f"--serve-args: {exc}") from None
        spec.environment = {**spec.environment, **DEV_MODE}
        timeout = STARTUP_TIMEOUT_S if "--startup-timeout" not in self.serve_args else args.startup_timeout
        return spec, float(timeout)


def parse_serve_args(argv: Sequence[str]):
    """``calibrate serve``'s parser on ``argv``; its usage error becomes a ``ServeArgsError``."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return build_parser().parse_args(["serve", *argv])
    except SystemExit:
        lines = [x for x in err.getvalue().splitlines() if x.strip()]
        reason = lines[-1].split("error:", 1)[-1].strip() if lines else "not understood"
        raise ServeArgsError(f"--serve-args {' '.join(argv)!r}: {reason} (they are options of "
                             "`python -m calibrate serve`; see its --help)") from None


def shape_of(served_model: str) -> str | None:
    """``llama-tiny`` -> ``tiny``: the shape ``calibrate serve`` serves under that name."""
    shape = shape_for_served(served_model)
    return shape.name if shape is not None else None


def core_for(i: int, cpu_count: int | None = None) -> str:
    """Instance ``i`` gets core ``i`` (wrapping around when there are more instances than cores)."""
    return str(i % max(1, cpu_count or os.cpu_count() or 1))


@contextlib.contextmanager
def spawn_vllm(instances: Sequence[VllmInstance]) -> Iterator[list[str]]:
    """Start every instance (their startups overlap); yield their URLs; always stop them all."""
    specs = [inst.spec() for inst in instances]
    servers = [VllmServer(spec) for spec, _ in specs]
    try:
        for server in servers:
            server.launch()
        for server, (_, timeout_s) in zip(servers, specs):
            server.wait_healthy(timeout_s)
        yield [s.url for s in servers]
    finally:
        with _signals_held():
            for server in servers:
                server.stop()


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Ignore a second Ctrl-C or SIGTERM while stopping: ``stop()`` escalates to SIGKILL itself."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


__all__ = ["ServeArgsError", "ServeError", "VLLM_CPU_BLOCK_SIZE", "VllmInstance", "core_for",
           "parse_serve_args", "shape_of", "spawn_vllm"]
