"""``build_trace``: a scenario's ``[workload]`` and ``[arrivals]`` tables -> a ``Trace``.

The one entry point the simulator, live mode and calibration call. Loading the
pool is cached; ordering and arrivals are cheap and come from the seed, so the
same (tables, seed, size) always gives the same trace, bit for bit.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from workload.arrivals import generate_arrivals, replay_arrivals
from workload.config import ArrivalSpec, WorkloadSpec, check_pair
from workload.loader import load_pool
from workload.ordering import ordered_rows, take_with_passes
from workload.pool import RequestPool
from workload.sessions import build_closed, build_concurrency, close_sessions
from workload.trace import Trace


def _check_size(seed: Any, num_requests: int | None, duration_s: float | None) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if num_requests is None and duration_s is None:
        raise ValueError("build_trace needs num_requests or duration_s (or both)")
    if num_requests is not None and (
        isinstance(num_requests, bool) or not isinstance(num_requests, (int, np.integer))
        or num_requests < 1
    ):
        raise ValueError(f"num_requests must be an integer >= 1, got {num_requests!r}")
    if duration_s is not None and not (
        isinstance(duration_s, (int, float)) and math.isfinite(duration_s) and duration_s > 0
    ):
        raise ValueError(f"duration_s must be a finite number > 0, got {duration_s!r}")


def _replay(
    pool: RequestPool, arr: ArrivalSpec, num_requests: int | None, duration_s: float | None,
    seed: int = 0,
) -> tuple[Trace, dict[str, Any]]:
    ts = pool.trace.timestamp_s
    has = np.isfinite(ts)
    if not has.any():
        raise ValueError(
            f"pattern 'replay' needs dataset timestamps; source {pool.meta.get('source')!r} has "
            f"none (use 'azure' or 'wildchat', or another pattern such as 'poisson')"
        )
    rows = np.flatnonzero(has)
    rows = rows[np.argsort(ts[rows], kind="stable")]
    rel = replay_arrivals(ts[rows], time_scale=arr.time_scale, target_rate=arr.target_rate)
    window = {}
    if arr.replay_window == "seeded":
        first = _seeded_window_start(rel, num_requests, duration_s, seed)
        window = {"replay_first_request": first, "replay_offset_s": float(rel[first])}
        rows, rel = rows[first:], rel[first:] - rel[first]
    span = float(rel[-1])
    gap = span / (len(rel) - 1) if len(rel) > 1 else 1.0
    period = span + gap  # a repeated pass starts one mean gap after the previous one ends
    if period <= 0 and num_requests is None:
        raise ValueError(
            "pattern 'replay' with duration_s needs timestamps that are not all equal "
            "(every request would arrive at 0 s, without end); give num_requests instead"
        )
    parts_rows, parts_t, parts_pass, have, p = [], [], [], 0, 0
    while True:
        t = rel + p * period
        if num_requests is not None:
            k = min(len(rows), num_requests - have)
        else:
            k = int(np.searchsorted(t, duration_s, side="right"))
        if k == 0:
            break
        parts_rows.append(rows[:k])
        parts_t.append(t[:k])
        parts_pass.append(np.full(k, p, dtype=np.int64))
        have += k
        p += 1
        if (num_requests is not None and have >= num_requests) or (
            num_requests is None and k < len(rows)
        ):
            break
    passes = np.concatenate(parts_pass)
    trace = take_with_passes(pool, np.concatenate(parts_rows), passes)
    info = {
        "replay_rows_without_timestamp": int((~has).sum()),
        "replay_span_s": span,
        "replay_mean_rate": (len(rel) - 1) / span if span > 0 else math.inf,
    }
    return trace.with_arrivals(np.concatenate(parts_t)), {**info, **window,
                                                          "passes": int(passes.max()) + 1}


def _seeded_window_start(rel: np.ndarray, num_requests: int | None, duration_s: float | None,
                         seed: int) -> int:
    """The request a ``replay_window = "seeded"`` replay starts at, drawn from ``seed``.

    Uniform over the starts that leave the whole run inside the trace (no second
    pass), so two seeds replay two windows of the same trace, overlapping only by
    chance; a trace too short for that is an error rather than a silent repeat.
    """
    rng = np.random.default_rng([seed, 0x5EED])
    if num_requests is not None:
        room = len(rel) - num_requests
        if room < 0:
            raise ValueError(
                f"arrivals.replay_window = 'seeded' needs a trace longer than the run: "
                f"{num_requests} requests asked, the trace has {len(rel)}; ask fewer, or "
                f"replay_window = 'start' (which repeats the trace)")
        return int(rng.integers(room + 1))
    room_s = float(rel[-1]) - float(duration_s)
    if room_s < 0:
        raise ValueError(
            f"arrivals.replay_window = 'seeded' needs a trace longer than the run: "
            f"duration_s = {duration_s:g} s, the trace spans {float(rel[-1]):g} s at this "
            f"speed; shorten the run, or replay_window = 'start' (which repeats the trace)")
    return int(np.searchsorted(rel, rng.uniform(0.0, room_s), side="left"))


def build_trace(
    workload: Mapping[str, Any],
    arrivals: Mapping[str, Any],
    *,
    seed: int,
    num_requests: int | None = None,
    duration_s: float | None = None,
    cache_dir=None,
    progress: bool = False,
) -> Trace:
    """A trace of ``num_requests`` requests, or of all arrivals within ``duration_s``.

    ``workload``/``arrivals`` are a scenario's ``[workload]``/``[arrivals]`` tables
    (missing keys take defaults; unknown keys raise ``ValueError``). If both sizes
    are given, ``num_requests`` wins. Requests are ordered per ``order`` with the
    seed, arrival times come from the pattern; ``request_id`` is 0..n-1 in arrival
    order. When more requests are needed than the pool holds, the pool is cycled
    (see ``ordering.take_with_passes``) and ``trace.meta["passes"]`` says how often.
    ``cache_dir=False`` turns the pool cache off.

    Sessions (``workload.sessions``): with ``sessions = "closed"`` (the default) and
    a multi-turn pool, the arrival process starts whole sessions and later turns
    carry think times; ``trace.meta["sessions"]`` says which rules the simulator and
    the load generator apply. A pool of single-turn requests gives the same trace
    in both modes. ``pattern = "concurrency"`` needs ``num_requests``.
    """
    spec = WorkloadSpec.from_mapping(workload)
    arr = ArrivalSpec.from_mapping(arrivals)
    check_pair(spec, arr)
    _check_size(seed, num_requests, duration_s)
    seed = int(seed)
    pool = load_pool(spec, seed=seed, cache_dir=cache_dir, progress=progress)
    if len(pool) == 0:
        raise ValueError(
            f"no request is left from source {spec.source!r} after the filters "
            f"{spec.filters.as_dict()} (max_conversations={spec.max_conversations})"
        )
    multi_turn = pool.n_conversations < len(pool)
    closed = arr.sessions == "closed" and multi_turn
    if arr.pattern == "concurrency":
        if num_requests is None:
            raise ValueError(
                "pattern 'concurrency' sends a number of requests, not a duration: give "
                "num_requests (clients send requests back to back until every one is sent)")
        open_rows = None
        if not closed:
            rng = np.random.default_rng([seed, 0x0D])
            open_rows = ordered_rows(pool, num_requests, spec.order, spec.active_sessions, rng)
        trace, info = build_concurrency(pool, spec.order, replace(arr, sessions="closed" if closed
                                                                  else "open"),
                                        seed, num_requests, open_rows)
    elif arr.pattern == "replay":
        trace, info = _replay(pool, arr, num_requests, duration_s, seed)
        if closed:
            trace, more = close_sessions(trace, arr.think_time, seed)
            info.update(more)
    elif closed:
        trace, info = build_closed(pool, spec.order, arr, seed, num_requests, duration_s)
    else:
        n = num_requests
        times = None
        if n is None:
            times = generate_arrivals(arr, seed, duration_s=duration_s)
            n = len(times)
            if n == 0:
                raise ValueError(
                    f"no request arrives within duration_s={duration_s} at these arrival "
                    f"settings {arr.as_dict()}; lengthen the run or raise the rate"
                )
        else:
            times = generate_arrivals(arr, seed, n=n)
        rng = np.random.default_rng([seed, 0x0D])
        rows, passes = ordered_rows(pool, n, spec.order, spec.active_sessions, rng)
        trace = take_with_passes(pool, rows, passes).with_arrivals(times)
        info = {"passes": int(passes.max()) + 1}
    if not closed:  # open sessions wait no think time (a pool's recorded ones are dropped)
        trace = replace(trace, think_s=np.full(len(trace), np.nan))
    n = len(trace)
    meta = {
        **pool.meta,
        "pool_size": len(pool),
        "pool_conversations": pool.n_conversations,
        "order": spec.order if arr.pattern != "replay" else "timestamp",
        "active_sessions": spec.active_sessions,
        # How the driver sends it (workload.sessions.SessionPlan).
        "sessions": "closed" if closed else "open",
        "clients": arr.concurrency if arr.pattern == "concurrency" else 0,
        "arrivals": arr.as_dict(),
        "seed": seed,
        "num_requests": n,
        "duration_s": duration_s,
        **info,
    }
    if meta["passes"] > 1:
        meta["cycled"] = (
            f"{n} requests from a pool of {len(pool)}: cycled through it {meta['passes']} times; "
            f"repeats get conversation ids '<id>#<pass>' and re-salted block hashes"
        )
    return replace(trace, request_id=np.arange(n, dtype=np.int64), meta=meta)
