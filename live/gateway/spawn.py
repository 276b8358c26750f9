"""Run a gateway as a child process (what ``python -m live --gateway`` does per run)."""
from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from live.transport.processes import ChildServer, start_all, stop_all


def gateway_argv(backends: Sequence[str], strategy: str, *, params: Mapping[str, Any] | None = None,
                 seed: int = 0, names: Sequence[str] | None = None, scrape_interval_s: float = 0.5,
                 host: str = "127.0.0.1", extra: Sequence[str] = ()) -> list[str]:
    """``python -m live.gateway`` arguments for these settings (``--port 0``)."""
    argv = ["--backends", ",".join(backends), "--strategy", strategy, "--seed", str(seed),
            "--scrape-interval", repr(float(scrape_interval_s)), "--host", host, "--port", "0",
            # a run's terminal shows its gateways' failures, not every start and stop
            "--log-level", "warning"]
    if names:
        argv += ["--names", ",".join(names)]
    for key, value in (params or {}).items():
        argv += ["--param", f"{key}={json.dumps(value)}"]
    return argv + list(extra)


@contextlib.contextmanager
def start_gateway(backends: Sequence[str], strategy: str, *, startup_timeout_s: float = 60.0,
                  **kwargs: Any) -> Iterator[str]:
    """Start ``python -m live.gateway`` in front of ``backends``; yield its URL; stop it."""
    child = ChildServer("live.gateway", gateway_argv(backends, strategy, **kwargs))
    try:
        start_all([child], startup_timeout_s)
        yield child.url
    finally:
        stop_all([child])
