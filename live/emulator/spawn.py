"""Start emulators as child processes on free loopback ports, and always stop them.

Each emulator is its own process (``python -m live.emulator --port 0``), so N of
them step their engines truly in parallel, as N servers would. The context
managers yield once every one answers ``/health`` and stop them all on exit,
whatever happened (see ``live.transport.processes`` for the no-orphans guarantees).
"""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from live.transport.processes import ChildServer, ChildStartError, start_all, stop_all

EmulatorStartError = ChildStartError


@dataclass(frozen=True)
class EmulatorSpec:
    """One emulator to start: its latency profile and any extra CLI arguments."""

    profile: str = "cpu-tiny"
    args: Sequence[str] = field(default_factory=tuple)

    def argv(self, host: str) -> list[str]:
        return ["--profile", self.profile, "--host", host, "--port", "0", *self.args]


@contextlib.contextmanager
def spawn_specs(
    specs: Sequence[EmulatorSpec], *, host: str = "127.0.0.1", startup_timeout_s: float = 60.0,
    python: str = sys.executable,
) -> Iterator[list[ChildServer]]:
    """Start one emulator per spec; yield the children (``.url``, ``.proc``); stop all."""
    children: list[ChildServer] = []
    try:
        for spec in specs:
            children.append(ChildServer("live.emulator", spec.argv(host), python=python))
        start_all(children, startup_timeout_s)
        yield children
    finally:
        stop_all(children)


@contextlib.contextmanager
def spawn(n: int, profile: str = "cpu-tiny", *, args: Sequence[str] = (),
          host: str = "127.0.0.1", startup_timeout_s: float = 60.0) -> Iterator[list[str]]:
    """Start ``n`` identical emulators; yield their base URLs; stop them on exit.

    ::

        with spawn(2, "cpu-tiny") as urls:
            ...  # urls == ["http://127.0.0.1:41235", "http://127.0.0.1:39127"]
    """
    if n < 1:
        raise ValueError(f"spawn needs n >= 1, got {n}")
    with spawn_specs([EmulatorSpec(profile, tuple(args))] * n, host=host,
                     startup_timeout_s=startup_timeout_s) as children:
        yield [c.url for c in children]
