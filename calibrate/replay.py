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
