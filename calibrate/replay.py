"""Replay measured requests through the simulator's engine model, one unit at a time.

The step-time model is about engine *steps*, but a client only observes
*requests*. To compare like with like, each measured unit (its requests with
their real send times, lengths and prefix sharing) is rebuilt as a ``Trace`` and
run through ``sim.cluster.simulate`` on one backend with a candidate latency
model; the simulated TTFT/TPOT/E2EL of the very same requests come back aligned
with the measured rows. The fitter (``calibrate.fit``) and the fidelity check
(``calibrate.check``) both use this.

A fixed per-request overhead (HTTP parsing, input processing, IPC to the engine
core, detokenizing and streaming the reply) is not a step cost; it is modelled
as the cluster's ``network_delay_s`` = overhead / 2 on the way in and out, so it
adds ``overhead`` to TTFT and E2EL, nothing to TPOT, and delays admission the
way the real front end does.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

import routing
from calibrate.prompts import build_trace
from calibrate.modeldir import TOKENIZER_VOCAB_SIZE
from sim.cluster import BackendConfig, ClusterConfig, simulate
from sim.engine import EngineConfig
from sim.latency import EngineDefaults, LatencyModel, LatencyProfile
from workload.trace import Trace

#: Gap between replayed requests of a ``sequential`` unit: far longer than any request.
SEQUENTIAL_SPACING_S = 1000.0
#: Columns a measured row needs to be replayed.
REPLAY_COLUMNS = ("unit", "request_id", "input_len", "output_len", "prefix_id", "shared_len", "send_s")


@dataclass
class PreparedUnit:
    """One unit's trace, and which measured rows its simulated requests belong to."""

    key: str
    trace: Trace
    rows: np.ndarray  # positions in the measured frame, in trace order


def prepare_units(data: pd.DataFrame, block_size: int,
                  vocab_size: int = TOKENIZER_VOCAB_SIZE) -> list[PreparedUnit]:
    """Traces of every unit of ``data`` (ok rows with at least one output token)."""
    missing = [c for c in REPLAY_COLUMNS if c not in data.columns]
    if missing:
        raise ValueError(f"profiling data lacks column(s) {', '.join(missing)} needed to replay it")
    units = []
    for key, g in data.groupby("unit", sort=False):
        g = g.sort_values("send_s", kind="stable")
        arrivals = g["send_s"].to_numpy(float)
        arrivals = arrivals - arrivals.min()
        if "mode" in g and (g["mode"] == "sequential").all():
            # Each was sent when the previous one had finished, to an idle engine. Replayed at
            # the measured times, a candidate slower than reality would overlap them; spaced
            # apart they run alone as they did (the prefix cache still keeps their blocks).
            arrivals = np.arange(len(g), dtype=float) * SEQUENTIAL_SPACING_S
        trace = build_trace(g["request_id"].to_numpy(), g["input_len"].to_numpy(),
                            g["output_len"].to_numpy(), arrivals, g["prefix_id"].to_numpy(),
                            g["shared_len"].to_numpy(), block_size=block_size, vocab_size=vocab_size,
                            label=f"{key}:")
        pos = pd.Series(np.arange(len(data)), index=data.index)[g.index].to_numpy()
        # build_trace sorts by arrival (stable), and g is already in that order.
        units.append(PreparedUnit(str(key), trace, pos))
    return units


def make_profile(model: LatencyModel, engine: EngineDefaults, name: str = "candidate") -> LatencyProfile:
    return LatencyProfile(name=name, model=model, engine=engine)


def simulate_units(units: list[PreparedUnit], n_rows: int, model: LatencyModel, engine: EngineDefaults,
                   overhead_s: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Simulated (ttft, tpot, e2el) per measured row (NaN for rows not replayed)."""
    ttft = np.full(n_rows, np.nan)
    tpot = np.full(n_rows, np.nan)
    e2el = np.full(n_rows, np.nan)
    profile = make_profile(model, engine)
    cfg = EngineConfig(num_kv_blocks=engine.num_kv_blocks, block_size=engine.block_size,
                       max_num_seqs=engine.max_num_seqs, max_num_batched_tokens=engine.max_num_batched_tokens)
    cluster = ClusterConfig([BackendConfig("backend", "backend", profile, cfg)],
                            network_delay_s=max(overhead_s, 0.0) / 2.0, drain_s=3600.0)
    for unit in units:
        result = simulate(unit.trace, routing.build("round_robin"), cluster)
        recs = result.records
        t = np.array([r.first_token_s - r.arrival_s if r.status == "ok" else np.nan for r in recs])
        e = np.array([r.last_token_s - r.arrival_s if r.status == "ok" else np.nan for r in recs])
        n_out = np.array([r.output_len for r in recs], dtype=float)
        with np.errstate(invalid="ignore", divide="ignore"):
            p = np.where(n_out > 1, (e - t) / (n_out - 1), np.nan)
        ttft[unit.rows], tpot[unit.rows], e2el[unit.rows] = t, p, e
    return ttft, tpot, e2el


class _RecordingLatency:
    """Wraps a ``LatencyModel`` and records each step's composition as the engine plans it."""

    def __init__(self, model: LatencyModel) -> None:
        self.model = model
        self.steps: list[tuple[int, int, float, int]] = []

    def step_time(self, num_tokens: int, num_seqs: int, prefill_attn_work: float, decode_context: int) -> float:
        self.steps.append((num_tokens, num_seqs, prefill_attn_work, decode_context))
        return self.model.step_time(num_tokens, num_seqs, prefill_attn_work, decode_context)

    def decode_run(self, *args):  # pragma: no cover - the linearizer plans one step at a time
        raise AssertionError("the schedule recorder steps one step at a time")


@dataclass
class Linearized:
    """Per measured row, latency = ``const + design @ [step, token, seq, prefill_attn, decode_attn, overhead]``.

    Exact for the schedule (which requests share which steps) the engine model
    produced under the coefficients it was built with; NaN rows were not replayed.
    """

    ttft_design: np.ndarray  # (rows, 6)
    ttft_const: np.ndarray  # (rows,)
    tpot_design: np.ndarray  # (rows, 6)
    e2el_design: np.ndarray  # (rows, 6)
    e2el_const: np.ndarray  # (rows,)
    steps: int


def linearize_units(units: list[PreparedUnit], n_rows: int, model: LatencyModel, engine: EngineDefaults,
                    overhead_s: float = 0.0) -> Linearized:
    """Step ``sim.engine.Engine`` through every unit one step at a time and record the schedule.

    A request's TTFT is the time from its arrival to the end of the step that
    emitted its first token: the idle-to-busy start of that busy period, plus
    the durations of every step since, each ``[1, tokens, seqs, prefill work,
    decode context] @ coefficients``; the overhead adds to TTFT and E2EL (half
    of it delays the arrival, as ``network_delay_s`` does in the cluster).
    """
    from sim.engine import Engine
    from sim.request import EngineRequest

    nan6 = np.full((n_rows, 6), np.nan)
    lin = Linearized(nan6.copy(), np.full(n_rows, np.nan), nan6.copy(), nan6.copy(), np.full(n_rows, np.nan), 0)
    cfg = EngineConfig(num_kv_blocks=engine.num_kv_blocks, block_size=engine.block_size,
                       max_num_seqs=engine.max_num_seqs, max_num_batched_tokens=engine.max_num_batched_tokens)
    half = max(overhead_s, 0.0) / 2.0
    for unit in units:
        trace = unit.trace
        rec = _RecordingLatency(model)
        eng = Engine(cfg, rec)  # duck-typed latency: records every planned step
        shareable = trace.shareable_blocks().tolist()
        arrivals = trace.arrival_s
        n = len(trace)
        first_step = np.full(n, -1)
        last_step = np.full(n, -1)
        busy_of_step: list[int] = []  # per step: the index of its busy period
        busy_start: list[float] = []  # per busy period: its start (original arrival time)
        busy_first: list[int] = []  # per busy period: its first step
        t, i, k = 0.0, 0, 0
        while i < n or eng.has_work:
            if not eng.has_work:
                t = max(t, float(arrivals[i]) + half)
                busy_start.append(float(arrivals[i]))
                busy_first.append(k)
            while i < n and arrivals[i] + half <= t:
                eng.add_request(EngineRequest(i, int(trace.input_len[i]), int(trace.output_len[i]),
                                              trace.hashes(i), arrival=t, num_shareable=shareable[i]))
                i += 1
            plan = eng.plan(1)
            out = eng.complete(plan, 1, t)
            t += plan.first
            for r in out.first_tokens:
                first_step[r.id] = k
            for r in out.finished:
                last_step[r.id] = k
            busy_of_step.append(len(busy_start) - 1)
            k += 1
        phi = np.zeros((k, 6))
        phi[:, 0] = 1.0
        if k:
            phi[:, 1:5] = np.asarray(rec.steps, dtype=float)
        cum = np.vstack([np.zeros((1, 6)), np.cumsum(phi, axis=0)])  # cum[j] = sum of steps < j
        ok = (first_step >= 0) & (last_step >= 0)
        idx = np.flatnonzero(ok)
        f, l = first_step[idx], last_step[idx]
        b = np.asarray(busy_of_step)[f]
        b0 = np.asarray(busy_first)[b]
        const = np.asarray(busy_start)[b] - arrivals[idx]
        ttft = cum[f + 1] - cum[b0]
        ttft[:, 5] = 1.0
        e2el = cum[l + 1] - cum[b0]
        e2el[:, 5] = 1.0
        nout = trace.output_len[idx].astype(float)
        tpot = np.full((len(idx), 6), np.nan)
        multi = nout > 1
        tpot[multi] = (cum[l[multi] + 1] - cum[f[multi] + 1]) / (nout[multi] - 1)[:, None]
        rows = unit.rows[idx]
        lin.ttft_design[rows], lin.ttft_const[rows] = ttft, const
        lin.e2el_design[rows], lin.e2el_const[rows] = e2el, const
        lin.tpot_design[rows] = tpot
        lin.steps += k
    return lin
