"""Measure vLLM's API-server work per job as CPU seconds of its process (profiling's ``frontend`` phase).

The front-end model (``sim.frontend``) charges the API server's single loop
``input_s + input_token_s * prompt`` per request and ``output_step_s +
output_token_s * tokens`` per engine step. Five small units load those four
terms in different proportions:

    frontend/short     48 requests one at a time, 32-token prompts, 1 output token
    frontend/long      16 requests one at a time, 1024-token prompts, 1 output token
    frontend/stream1   1 request, 32-token prompt, 512 output tokens (a step per token)
    frontend/stream8   8 requests at once, 32-token prompts, 256 output tokens each
    frontend/stream32  32 requests at once, 32-token prompts, 256 output tokens each

For each, the API server's CPU seconds (``/proc/<pid>/stat``, the process
listening on the backend's port) and the engine steps it handled
(``vllm:iteration_tokens_total``'s count) give one equation. The process also
burns CPU while idle (``/metrics`` scrapes, periodic logging), at a rate
measured over ``BASELINE_S`` first; that rate is a fifth unknown, and its
measurement a sixth equation. Non-negative least squares over the six gives
the costs (the process's CPU clock ticks every 10 ms, hence units of a few
seconds). They are CPU time: the least a job takes on the loop.
``calibrate.fit`` keeps the fitted front end between them and ``WALL_FACTOR``
times them.

Why the idle rate is fitted rather than subtracted: only ``frontend/long`` has
prompts of other than 32 tokens, so it alone tells the per-request cost from
the per-prompt-token one. Its 16 requests cost the loop a few tens of ms in 11
to 30 s, less than a 3-s measurement of the idle rate can resolve, and with the
rate subtracted its CPU often came out negative. Dropping it then left the two
costs indistinguishable, and the solver gave the whole per-request cost to the
prompt tokens (2026-12-05b: 71 us per token for mid, 73 ms on a 1024-token
prompt, which the fit could not go below). Fitted with the rest, the idle rate
absorbs that noise and the long unit keeps its say.
"""
from __future__ import annotations

import asyncio
import time

import aiohttp
import numpy as np
from scipy.optimize import nnls

from calibrate.probe import PlannedRequest, Unit
from calibrate.procstat import clock_tick_s, cpu_seconds
from live.transport.prometheus import iter_samples
from sim.frontend import FRONT_END_COEFFICIENTS

#: A front-end job's service time is at least its CPU time, and at most this many times it:
#: the API server's loop shares its core with the engine core's scheduler process and the
#: load generator, so it may get a third of that core when all three are busy.
WALL_FACTOR = 3.0
#: Seconds of idle measurement for the API server's background CPU rate.
BASELINE_S = 3.0
STEPS_METRIC = "vllm:iteration_tokens_total_count"


def plan_frontend(next_id, scale: float = 1.0) -> list[Unit]:
    """The measurement units (``next_id()`` hands out request ids); ``scale`` shrinks them (tests)."""
    def n(k: int) -> int:
        return max(1, int(round(k * scale)))

    def reqs(count, n_in, n_out, bucket):
        return [PlannedRequest(next_id(), n_in, n_out, bucket=bucket) for _ in range(count)]
    return [
        Unit("frontend", "short", "sequential", reqs(n(48), 32, 1, "32")),
        Unit("frontend", "long", "sequential", reqs(n(16), 1024, 1, "1024")),
        Unit("frontend", "stream1", "sequential", reqs(1, 32, n(512), "32")),
        Unit("frontend", "stream8", "open", reqs(8, 32, n(256), "32"), concurrency=8),
        Unit("frontend", "stream32", "open", reqs(32, 32, n(256), "32"), concurrency=32),
    ]


async def engine_steps(session: aiohttp.ClientSession, url: str) -> float:
    """Engine steps so far, from ``/metrics`` (NaN if the server does not export them)."""
    async with session.get(url.rstrip("/") + "/metrics") as resp:
        resp.raise_for_status()
        text = await resp.text()
    values = [v for name, _, v in iter_samples(text) if name == STEPS_METRIC]
    return float(sum(values)) if values else float("nan")


async def baseline_rate(pid: int, seconds: float = BASELINE_S) -> float:
    """The API server's CPU seconds per second while no request is in flight."""
    c0, t0 = cpu_seconds(pid), time.perf_counter()
    await asyncio.sleep(seconds)
    return max(cpu_seconds(pid) - c0, 0.0) / (time.perf_counter() - t0)


async def measure_unit(runner, unit: Unit, pid: int, session: aiohttp.ClientSession, url: str) -> tuple[list, dict]:
    """Run ``unit`` and return its rows and its CPU record."""
    s0 = await engine_steps(session, url)
    c0, t0 = cpu_seconds(pid), time.perf_counter()
    rows = await runner.run_unit(unit)
    c1, t1 = cpu_seconds(pid), time.perf_counter()
    s1 = await engine_steps(session, url)
    ok = [r for r in rows if r["ok"]]
    return rows, {
        "cpu_s": c1 - c0, "seconds": t1 - t0, "requests": len(rows), "ok": len(ok),
        "prompt_tokens": int(sum(r["input_len"] for r in rows)),
        "output_tokens": int(sum(r["output_len"] for r in ok)),
        "steps": s1 - s0,
    }


def estimate(units: dict[str, dict], baseline_cpu_per_s: float, baseline_s: float = BASELINE_S) -> dict:
    """Non-negative least squares of the four costs and the idle CPU rate on the units' CPU seconds.

    Every equation is weighted by its own size (relative errors), but never finer than
    two CPU clock ticks: a unit whose jobs barely register is held to that resolution.
    """
    keys = [k for k, u in units.items() if u["requests"] and np.isfinite(u["steps"])]
    A = np.array([[units[k]["requests"], units[k]["prompt_tokens"], units[k]["steps"], units[k]["output_tokens"],
                   units[k]["seconds"]] for k in keys], float).reshape(-1, len(FRONT_END_COEFFICIENTS) + 1)
    y = np.array([units[k]["cpu_s"] for k in keys], float)
    A = np.vstack([A, [0.0] * len(FRONT_END_COEFFICIENTS) + [baseline_s]])
    y = np.append(y, baseline_cpu_per_s * baseline_s)
    if np.linalg.matrix_rank(A[:-1, :-1]) < len(FRONT_END_COEFFICIENTS):
        return {"ok": False, "reason": f"the {len(keys)} usable units of {len(units)} do not tell the four costs "
                                       f"apart (a unit needs its requests and engine steps; the per-request and "
                                       f"per-prompt-token costs need prompts of two lengths)"}
    scale = np.maximum(np.abs(y), 2 * clock_tick_s())
    x, _ = nnls(A / scale[:, None], y / scale)
    fitted = A @ x
    return {"ok": True, **{name: float(v) for name, v in zip(FRONT_END_COEFFICIENTS, x)},
            "idle_cpu_per_s": float(x[-1]),
            "relative_residuals": {k: float(f / t - 1) if t else None   # None: no CPU time to compare
                                   for k, f, t in zip([*keys, "idle"], fitted, y)}}
