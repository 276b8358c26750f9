"""Sessions: how the turns of a conversation are sent, and traces built for it.

Three ways to send a trace, chosen by ``[arrivals]`` and kept in ``trace.meta``
(``sessions``, ``clients``); the simulator (``sim.sessions``) and the live load
generator (``live.loadgen``) follow the same rules, read from ``SessionPlan``:

- **open** (``sessions = "open"``): every request leaves at its own ``arrival_s``,
  whether or not the previous turn of its conversation has been answered.
- **closed** (``sessions = "closed"``, the default): a session's first turn leaves
  at its ``arrival_s`` (the arrival process starts sessions); each later turn
  leaves when the previous turn's reply has ended plus its think time
  (``think_s``). In such a trace ``arrival_s`` of a later turn is a lower bound of
  its send time (its session's start plus the think times before it, as if every
  reply took no time); rows are in that order.
- **concurrency** (``pattern = "concurrency"``): ``clients`` closed-loop clients,
  each sending its next request when its last one has ended, as ``vllm bench
  serve --max-concurrency N`` does at an infinite request rate
  (``vllm/benchmarks/serve.py``: a semaphore of N around every request, vLLM 0.32)
  and GuideLLM's concurrent profile (``ConcurrentStrategy`` in
  ``src/guidellm/scheduler/strategies.py``: N streams, the next request of a
  stream at its last completion; ``rampup_duration`` 0 by default, so all streams
  start at once, as here). With closed sessions a client runs one session at a
  time, waiting the think time between its turns and none between sessions; with
  open sessions clients take the trace's requests in order. ``arrival_s`` is 0.

In every mode a turn that fails (error, timeout, rejected) ends its session: the
session's later turns that have not been sent are never sent and are recorded
as ``skipped`` (a follow-up whose history does not exist is not a request a user
would make).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from workload.arrivals import generate_arrivals
from workload.config import ArrivalSpec
from workload.ordering import _conversation_rows, take_with_passes
from workload.pool import RequestPool
from workload.thinktime import DataThink, ThinkDist, describe_think
from workload.trace import Trace

#: ``trace.meta["sessions"]`` of a trace built before sessions existed, or by hand.
DEFAULT_MODE = "open"


def session_codes(conversation_id: np.ndarray) -> np.ndarray:
    """A dense integer per distinct conversation id, in order of first appearance."""
    if len(conversation_id) == 0:
        return np.zeros(0, dtype=np.int64)
    import pandas as pd

    codes, _ = pd.factorize(np.asarray(conversation_id, dtype=object), sort=False)
    return codes.astype(np.int64)


def next_rows(codes: np.ndarray) -> np.ndarray:
    """Per row, the next row (in row order) of the same session; -1 for its last."""
    n = len(codes)
    out = np.full(n, -1, dtype=np.int64)
    if n < 2:
        return out
    order = np.argsort(codes, kind="stable")  # sessions grouped, rows in order within each
    same = codes[order[1:]] == codes[order[:-1]]
    out[order[:-1][same]] = order[1:][same]
    return out


@dataclass(frozen=True)
class SessionPlan:
    """What a driver needs to send a trace by its session rules (see the module docstring)."""

    mode: str  # "open" or "closed"
    clients: int  # > 0: concurrency mode with this many clients
    session: np.ndarray  # int64 per row: its session (dense codes)
    next_row: np.ndarray  # int64 per row: the session's next turn in this trace, -1 if none
    first: np.ndarray  # bool per row: the session's first turn in this trace
    think_s: np.ndarray  # float64 per row: think time before it (NaN: a first turn)

    @property
    def closed(self) -> bool:
        return self.mode == "closed"

    @classmethod
    def of(cls, trace: Trace) -> SessionPlan:
        mode = str(trace.meta.get("sessions", DEFAULT_MODE))
        if mode not in ("open", "closed"):
            raise ValueError(f"trace.meta['sessions'] = {mode!r}; expected 'open' or 'closed'")
        clients = int(trace.meta.get("clients", 0) or 0)
        codes = session_codes(trace.conversation_id)
        nxt = next_rows(codes)
        first = np.ones(len(codes), dtype=bool)
        first[nxt[nxt >= 0]] = False
        return cls(mode, clients, codes, nxt, first, np.asarray(trace.think_s, dtype=np.float64))

    def first_rows(self) -> np.ndarray:
        return np.flatnonzero(self.first)


# --- building traces -----------------------------------------------------------------------
def draw_think(dist: ThinkDist, later: np.ndarray, measured: np.ndarray, seed: int,
               source: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Think times for the rows flagged ``later`` (NaN elsewhere), and what was done."""
    think = np.full(len(later), np.nan)
    info: dict[str, Any] = {"think_time": describe_think(dist)}
    if isinstance(dist, DataThink):
        values, filled = dist.from_data(measured[later], source)
        info["think_time_filled_with_median"] = filled
    else:
        values = dist.draw(int(later.sum()), np.random.default_rng([seed, 0x7D]))
    think[later] = values
    return think, info


def close_sessions(trace: Trace, dist: ThinkDist, seed: int) -> tuple[Trace, dict[str, Any]]:
    """Closed sessions from a trace whose sessions' first rows carry their start times.

    Each later turn gets a think time; its ``arrival_s`` becomes its session's start
    plus the think times so far (the lower bound of its send time), and rows are
    re-ordered by it (stably: a session's turns keep their order).
    """
    n = len(trace)
    codes = session_codes(trace.conversation_id)
    nxt = next_rows(codes)
    later = np.zeros(n, dtype=bool)
    later[nxt[nxt >= 0]] = True
    think, info = draw_think(dist, later, trace.think_s, seed, str(trace.meta.get("source")))
    # Each session's start is the arrival of its first row; cumulative thinks per session.
    starts = np.full(int(codes.max()) + 1 if n else 0, np.nan)
    first_rows = np.flatnonzero(~later)
    starts[codes[first_rows]] = trace.arrival_s[first_rows]
    gaps = np.where(later, think, 0.0)
    order = np.argsort(codes, kind="stable")
    cum = np.cumsum(gaps[order])
    grouped = codes[order]
    # Subtract the running sum at each session's first row (its own gap is 0).
    begin = np.r_[True, grouped[1:] != grouped[:-1]]
    base = np.maximum.accumulate(np.where(begin, np.arange(n), 0))
    offset = cum - cum[base]
    planned = np.empty(n)
    planned[order] = starts[grouped] + offset
    resort = np.argsort(planned, kind="stable")
    out = trace.take(resort)
    out = replace(out, think_s=think[resort]).with_arrivals(planned[resort])
    info.update(ramp_note(out.arrival_s, trace.arrival_s[first_rows], think[later]))
    return out, info


def ramp_note(planned: np.ndarray, starts: np.ndarray, thinks: np.ndarray) -> dict[str, Any]:
    """A warning when most turns trail after the sessions have started.

    Closed sessions reach the offered request rate only once sessions overlap, after
    about (turns per session) x (think time); if the trace's sessions all start
    before most of its turns are due, the load it offers stays well below ``rate``.
    """
    if len(starts) == 0 or len(planned) == 0:
        return {}
    window = float(np.max(starts))
    share = float(np.mean(planned <= window)) if window > 0 else 0.0
    info: dict[str, Any] = {"share_planned_while_sessions_start": share}
    if share < 0.5 and len(thinks):
        info["warning"] = (
            f"closed sessions: only {share:.0%} of the turns are due while sessions start "
            f"(the first {window:.0f} s); the rest trail over "
            f"{float(np.max(planned)) - window:.0f} s of think times (mean "
            f"{float(np.mean(thinks)):.3g} s), so the offered load stays below arrivals.rate. "
            "Send more requests (num_requests), shorten arrivals.think_time, or use "
            "sessions = \"open\" or pattern = \"concurrency\"")
    return info


def _sessions_rows(pool: RequestPool, order: str, rng: np.random.Generator,
                   n: int | None, k_sessions: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Rows of whole sessions (turns in order) and their pass numbers: ``n`` rows (the
    last session cut short), or ``k_sessions`` whole sessions; the pool is cycled."""
    starts = pool.conv_starts
    rows, passes, have_rows, have_sessions, p = [], [], 0, 0, 0
    while (n is not None and have_rows < n) or (k_sessions is not None and have_sessions < k_sessions):
        conv = (np.arange(pool.n_conversations) if order == "sequential"
                else rng.permutation(pool.n_conversations))
        if k_sessions is not None:
            conv = conv[: k_sessions - have_sessions]
        r = _conversation_rows(starts, conv)
        if n is not None:
            r = r[: n - have_rows]
        if len(r) == 0:
            break
        rows.append(r)
        passes.append(np.full(len(r), p, dtype=np.int64))
        have_rows += len(r)
        have_sessions += len(conv)
        p += 1
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(rows), np.concatenate(passes)


def _scaled(arr: ArrivalSpec, factor: float) -> ArrivalSpec:
    """The arrival process of sessions: every rate times ``factor`` (sessions per request)."""
    return replace(arr, rate=arr.rate * factor, base_rate=arr.base_rate * factor,
                   peak_rate=arr.peak_rate * factor)


def _starts_per_row(trace: Trace, session_starts: np.ndarray) -> np.ndarray:
    """``arrival_s`` for rows grouped by session: every row gets its session's start."""
    codes = session_codes(trace.conversation_id)
    return session_starts[codes]


def build_closed(pool: RequestPool, order: str, arr: ArrivalSpec, seed: int,
                 num_requests: int | None, duration_s: float | None) -> tuple[Trace, dict[str, Any]]:
    """Closed sessions under an arrival process of sessions (every pattern but replay)."""
    rng = np.random.default_rng([seed, 0x0D])
    mean_turns = len(pool) / max(pool.n_conversations, 1)
    if num_requests is not None:
        rows, passes = _sessions_rows(pool, order, rng, num_requests, None)
        trace = take_with_passes(pool, rows, passes)
        k = int(session_codes(trace.conversation_id).max()) + 1 if len(trace) else 0
        factor = k / len(trace) if len(trace) else 1.0
        starts = generate_arrivals(_scaled(arr, factor), seed, n=k)
    else:
        factor = 1.0 / mean_turns
        starts = generate_arrivals(_scaled(arr, factor), seed, duration_s=duration_s)
        if len(starts) == 0:
            raise ValueError(
                f"no session starts within duration_s={duration_s} at these arrival settings "
                f"{arr.as_dict()} (sessions start at rate / {mean_turns:.2f} mean turns); "
                "lengthen the run or raise the rate")
        rows, passes = _sessions_rows(pool, order, rng, None, len(starts))
        trace = take_with_passes(pool, rows, passes)
    trace = replace(trace, arrival_s=_starts_per_row(trace, np.asarray(starts, dtype=np.float64)))
    closed, info = close_sessions(trace, arr.think_time, seed)
    info.update(passes=int(passes.max()) + 1 if len(passes) else 1,
                sessions_sent=int(len(starts)), session_rate_factor=float(factor))
    return closed, info


def build_concurrency(pool: RequestPool, order: str, arr: ArrivalSpec, seed: int,
                      num_requests: int, open_rows: tuple[np.ndarray, np.ndarray] | None
                      ) -> tuple[Trace, dict[str, Any]]:
    """The requests ``arr.concurrency`` clients send: whole sessions in order (closed), or
    ``open_rows`` (the open order) taken one request at a time; ``arrival_s`` is 0."""
    if arr.sessions == "open" and open_rows is not None:
        rows, passes = open_rows
        trace = take_with_passes(pool, rows, passes)
        trace = replace(trace, think_s=np.full(len(trace), np.nan))
        info: dict[str, Any] = {"passes": int(passes.max()) + 1 if len(passes) else 1}
    else:
        rng = np.random.default_rng([seed, 0x0D])
        rows, passes = _sessions_rows(pool, order, rng, num_requests, None)
        trace = take_with_passes(pool, rows, passes)
        codes = session_codes(trace.conversation_id)
        nxt = next_rows(codes)
        later = np.zeros(len(trace), dtype=bool)
        later[nxt[nxt >= 0]] = True
        think, info = draw_think(arr.think_time, later, trace.think_s, seed,
                                 str(trace.meta.get("source")))
        trace = replace(trace, think_s=think)
        info["passes"] = int(passes.max()) + 1 if len(passes) else 1
    return trace.with_arrivals(np.zeros(len(trace))), info


__all__ = ["SessionPlan", "build_closed", "build_concurrency", "close_sessions", "draw_think",
           "next_rows", "session_codes"]
