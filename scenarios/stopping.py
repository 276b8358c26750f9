"""Stopping a run of a scenario (``python -m sim``, ``python -m live``) on signals.

``python -m sim`` and ``python -m live`` run for minutes to hours and are stopped
by Ctrl-C, by ``kill -INT``/``kill`` from a script, or by a CI runner's timeout.

- The first SIGINT or SIGTERM raises ``KeyboardInterrupt`` in the main thread: the
  command stops its workers, keeps every finished unit and prints how to resume.
- A second one runs the registered ``on_force`` hooks (which kill worker processes
  with SIGKILL), prints the force message and leaves with ``os._exit``: nothing can
  hang on a lock or a queue, whatever the first stop was doing.
- SIGINT is handled even when inherited as ignored. A shell starts a script's
  background jobs (``cmd &``) with SIGINT ignored, and Python keeps it ignored, so
  ``kill -INT`` would otherwise do nothing.

``python_command`` spells this interpreter for the resume command a stopped run prints.
"""
from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Callable


class StopSignals:
    """``with StopSignals() as stops:`` for the length of a command (main thread only)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.count = 0
        self.first: int | None = None
        self.first_message = "stopping (press Ctrl-C again to stop at once)\n"
        self.force_message = "stopped at once\n"
        self._hooks: list[Callable[[], None]] = []
        self._previous: dict[int, object] = {}

    def on_force(self, hook: Callable[[], None]) -> Callable[[], None]:
        """Run ``hook`` (it must be quick and must not block) on a second signal."""
        self._hooks.append(hook)
        return hook

    def remove(self, hook: Callable[[], None]) -> None:
        if hook in self._hooks:
            self._hooks.remove(hook)

    def __enter__(self) -> StopSignals:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        self.count += 1
        if self.count == 1:
            self.first = signum
            _say(self.first_message)
            raise KeyboardInterrupt
        for hook in list(self._hooks):
            try:
                hook()
            except Exception:  # noqa: BLE001 - leaving now matters more
                pass
        try:
            sys.stdout.flush()
        except Exception:  # noqa: BLE001 - a write the signal interrupted: skip it
            pass
        _say(self.force_message)
        os._exit(128 + signum)

    @property
    def exit_code(self) -> int:
        """The status to return after a clean stop: 128 + the signal (130 for SIGINT)."""
        return 128 + (self.first or signal.SIGINT)


def _say(text: str) -> None:
    """Write to stderr unbuffered: a handler may interrupt a ``print`` to the same stream,
    and a buffered write would then fail as a re-entrant call."""
    try:
        os.write(2, ("\n" + text).encode())
    except OSError:
        pass


def python_command() -> str:
    """How to call this interpreter in a printed command: ``python`` when that is it on
    ``PATH``, else its full path (a virtual environment's, typically)."""
    found = shutil.which("python")
    # Not resolving symlinks: a virtual environment's python links to the system's.
    if found and os.path.abspath(found) == os.path.abspath(sys.executable):
        return "python"
    return sys.executable
