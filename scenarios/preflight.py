"""What must hold before a scenario runs, beyond its schema: one check for every command.

``python -m sim``, ``python -m live`` and ``python -m scenarios check`` all call
``check_runnable``, so ``scenarios check`` says OK exactly when the other two would
start. It checks, for every grid point (``--set`` overrides included):

- each group's latency profile resolves (a shipped name, a ``.json`` path, or a
  derived-profile table): ``load_profile`` is the simulator's own loader, passed in
  because ``scenarios`` sits below ``sim``;
- each strategy builds with its parameters (``routing.build``);
- the trace fits in this machine's memory: ``num_requests`` times a lower bound of
  a trace's bytes per request, against the physical memory. Beyond it the trace
  builder would fail with ``MemoryError`` after minutes of work, or swap.

Every problem is a ``ScenarioError`` naming the key, as schema errors do.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import routing
from scenarios.errors import ScenarioError

#: A lower bound of a trace's memory per request (``workload.trace.Trace``): request id,
#: timestamps and arrival (3 x 8 bytes), turn and lengths (3 x 4), the conversation id's
#: pointer (8), a hash offset (8) and at least one block hash (8).
TRACE_BYTES_PER_REQUEST = 60


def physical_memory_bytes() -> int | None:
    """This machine's physical memory, or None where the platform does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:,.0f} {unit}"
        n /= 1000
    return f"{n:,.0f} PB"  # pragma: no cover


def check_runnable(scenario, points: Sequence[Any], load_profile: Callable[[Any], Any],
                   memory_bytes: int | None = None) -> None:
    """Raise ``ScenarioError`` for the first thing that would stop a run of ``points``."""
    where = str(scenario.source_path or "scenario")
    seen: dict[str, str | None] = {}
    for point in points:
        for group in point.scenario.cluster.groups:
            spec = group.profile
            key = spec if isinstance(spec, str) else json.dumps(spec, sort_keys=True, default=str)
            if key not in seen:
                try:
                    load_profile(spec)
                    seen[key] = None
                except Exception as exc:  # noqa: BLE001 - the loader's error is the user's input
                    seen[key] = str(exc)
            if seen[key] is not None:
                raise ScenarioError(f"cluster.groups.{group.name}.profile",
                                    seen[key], source=where)
    for i, s in enumerate(scenario.router.strategies):
        try:
            routing.build(s.name, seed=0, **s.params)
        except Exception as exc:  # noqa: BLE001 - any construction error is the user's input
            raise ScenarioError(f"router.strategies[{i}]", f"({s.label}) {exc}", source=where) from None
    n = scenario.num_requests
    memory = memory_bytes if memory_bytes is not None else physical_memory_bytes()
    if n and memory and n * TRACE_BYTES_PER_REQUEST > memory:
        raise ScenarioError(
            "num_requests",
            f"{n:,} requests need at least {_size(n * TRACE_BYTES_PER_REQUEST)} of memory for "
            f"their trace alone ({TRACE_BYTES_PER_REQUEST} bytes each), more than this machine's "
            f"{_size(memory)}; lower num_requests", source=where)
