"""Helpers of the live tests: running coroutines, tiny HTTP calls, in-process emulators."""
from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from typing import Any

from live.emulator import EmulatorServer, Faults
from live.transport.http import serving
from sim.engine import EngineConfig
from sim.latency import load_profile

TINY = "cpu-tiny"


def arun(coro, timeout: float = 60.0) -> Any:
    """Run a coroutine to completion with a hard time limit."""
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


def post_json(url: str, doc: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(url, data=json.dumps(doc).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


DEFAULT_FAULTS = {k: v for k, v in Faults().as_dict().items() if k != "seed"}


def restore(url: str) -> None:
    """Clear injected faults and start the emulator's engine over (waits until idle)."""
    post_json(url + "/_emulator/faults", DEFAULT_FAULTS)
    deadline = time.monotonic() + 10
    while True:
        try:
            post_json(url + "/_emulator/reset", {})
            return
        except urllib.error.HTTPError as exc:
            if exc.code != 409 or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def tiny_emulator(**kwargs: Any) -> serving:
    """An in-process cpu-tiny emulator: ``async with tiny_emulator() as emu: emu.url``."""
    prof = load_profile(TINY)
    d = prof.engine
    config = EngineConfig(num_kv_blocks=kwargs.pop("num_kv_blocks", d.num_kv_blocks),
                          block_size=16, max_num_seqs=d.max_num_seqs,
                          max_num_batched_tokens=d.max_num_batched_tokens)
    return serving(EmulatorServer(prof, config, model=kwargs.pop("model", TINY),
                                  max_model_len=kwargs.pop("max_model_len",
                                                           config.num_kv_blocks * 16),
                                  **kwargs))
