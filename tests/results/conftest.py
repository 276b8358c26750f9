"""Run directories built from records made here, for the results tests.

``make_run`` writes a complete run directory (manifest, scenario.toml, one record
file per unit) from a tiny queueing model: requests arrive as a Poisson process,
a strategy picks one of three backends, and latency grows with the backend's
in-flight count. It exercises every status (ok, error, timeout, rejected,
unfinished) and can add a strategy whose requests all fail. It is test data, not
a simulator; the browser test also opens the report of a real ``python -m sim`` run.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

from results.records import RequestRecord
from sim.itl import ItlEncoder
from results.rundir import RunDir, Unit

BACKENDS = ["gpu-a", "gpu-b", "gpu-c"]
SCENARIO = """# synthetic scenario written by tests/results/conftest.py
name = "synthetic"
[arrivals]
process = "poisson"
rate = [2.0, 6.0]
[slo]
ttft_ms = 120
tpot_ms = 15
"""


def unit_records(point: str, rate: float, strategy: str, seed: int, n: int = 80) -> list[RequestRecord]:
    rng = np.random.default_rng([seed, int(rate * 100), len(strategy)])
    arrivals = np.cumsum(rng.exponential(1 / rate, n))
    stop = float(arrivals[-1]) + 1.5  # the run ends 1.5 s after the last send
    busy: list[list[float]] = [[] for _ in BACKENDS]  # finish times per backend
    out = []
    for i, t in enumerate(arrivals):
        t = float(t)
        inflight = [sum(1 for f in fl if f > t) for fl in busy]
        if strategy == "round_robin":
            b = i % len(BACKENDS)
        elif strategy == "least_load":
            b = int(np.argmin(inflight))
        else:
            b = int(rng.integers(len(BACKENDS)))
        roll = rng.random()
        kw = dict(experiment_id="synthetic", point_id=point, strategy=strategy, seed=seed,
                  request_id=i, conversation_id=f"c{i // 3}", turn=i % 3,
                  input_len=int(rng.integers(20, 400)), cached_tokens=0,
                  requested_output_len=40, num_preemptions=0,
                  router_inflight_requests=inflight[b])
        if strategy == "always_fail" or roll < 0.03:
            finish = t + 0.05
            busy[b].append(finish)
            out.append(RequestRecord(backend=b, arrival_s=t, dispatch_s=t, first_token_s=math.nan,
                                     last_token_s=math.nan, finish_s=finish, output_len=0,
                                     status="error", error="HTTP 500", **kw))
            continue
        if roll < 0.05:
            out.append(RequestRecord(backend=-1, arrival_s=t, dispatch_s=math.nan,
                                     first_token_s=math.nan, last_token_s=math.nan, finish_s=t,
                                     output_len=0, status="rejected", error="no backend", **kw))
            continue
        load = inflight[b]
        ttft = 0.04 + 0.03 * load + float(rng.exponential(0.02))
        out_len = int(rng.integers(1, 41))
        gap = 0.01 * (1 + 0.15 * load)
        enc = ItlEncoder()
        half = (out_len - 1) // 2
        enc.add_run(gap, 0.0, half)
        enc.add_run(gap * 1.3, 0.0005, out_len - 1 - half)
        gaps = enc.gaps()
        first = t + ttft
        times = first + np.r_[0.0, np.cumsum(gaps)]
        status, err, finish = "ok", "", float(times[-1]) + 0.001
        if roll < 0.07:
            status, err, finish = "timeout", "deadline 2 s", t + 2.0
        if finish > stop:
            status, err, finish = "unfinished", "", stop
        received = times[times <= finish] if status != "ok" else times
        busy[b].append(finish)
        out.append(RequestRecord(
            backend=b, arrival_s=t, dispatch_s=t + 0.001,
            first_token_s=float(received[0]) if len(received) else math.nan,
            last_token_s=float(received[-1]) if len(received) else math.nan,
            finish_s=finish, output_len=len(received), status=status, error=err,
            itl_start=enc.start if status == "ok" else [],
            itl_step=enc.step if status == "ok" else [],
            itl_count=enc.count if status == "ok" else [], **kw))
    return out


def write_run(path: Path, rates=(2.0, 6.0), strategies=("round_robin", "random", "least_load"),
              seeds=(0, 1, 2), slo: dict | None = None, n: int = 80) -> Path:
    slo = {"ttft_ms": 120, "tpot_ms": 15} if slo is None else slo
    points = [{"point_id": f"p{i}", "label": f"rate={r:g}", "axes": {"arrivals.rate": r},
               "backends": [{"name": b, "group": "default", "profile": "synthetic"} for b in BACKENDS]}
              for i, r in enumerate(rates)]
    manifest = {
        "experiment_id": path.name, "mode": "sim", "scenario": "synthetic",
        "scenario_path": "scenarios/synthetic.toml", "created": "2025-01-01T00:00:00Z",
        "seeds": list(seeds), "strategies": [{"label": s, "name": s, "params": {}} for s in strategies],
        "points": points, "slo": slo, "duration_s": None, "num_requests": n,
    }
    run = RunDir.create(path, manifest, SCENARIO)
    for p, r in zip(points, rates):
        for s in strategies:
            for seed in seeds:
                run.write_unit(Unit(p["point_id"], s, seed), unit_records(p["point_id"], r, s, seed, n))
    return path


@pytest.fixture
def make_run(tmp_path):
    """``make_run(name, **options)`` -> path of a fresh synthetic run directory."""
    def make(name: str = "run", **kw) -> Path:
        return write_run(tmp_path / name, **kw)
    return make


def simulator_run(path: Path) -> Path:
    """A small real run: ``python -m sim`` on the shipped Poisson scenario (about 4 s)."""
    from sim.cli import main as sim_main

    args = ["scenarios/poisson.toml", "--set", "num_requests=200", "--set", "arrivals.rate=[4,12]",
            "--seeds", "0,1", "--workers", "1", "--out", str(path), "--quiet"]
    root = Path(__file__).resolve().parents[2]
    cwd = Path.cwd()
    try:
        os.chdir(root)
        assert sim_main(args) == 0
    finally:
        os.chdir(cwd)
    return path


@pytest.fixture(scope="session", params=["simulator", "synthetic-edge-cases"])
def report_run_dir(request, tmp_path_factory) -> Path:
    """The runs whose reports the browser test opens: a real simulator run, and
    synthetic records with every status and a strategy that never succeeds."""
    folder = tmp_path_factory.mktemp("report")
    if request.param == "simulator":
        return simulator_run(folder / "sim")
    return write_run(folder / "synthetic",
                     strategies=("round_robin", "random", "least_load", "always_fail"))
