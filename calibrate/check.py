"""Fidelity check: a workload the fit never saw, on the real backend and in the simulator.

The held-out workload differs from profiling in its prompt mix (log-uniform
prompt lengths instead of fixed buckets, uniform output lengths, a quarter of
the requests sharing one of three system-prompt prefixes) and its load levels:
Poisson arrivals at 50% and 80% of capacity and a burst sent at once.
Capacity is the simulated saturation throughput of this mix under the profile
(a burst of 128 requests: completed / makespan), unless given.

The real requests' send times, lengths and sharing are then replayed through
the simulator with the profile (``calibrate.replay``), so both sides see the
same arrivals. Reported per unit and pooled: the relative error of TTFT p50/p90,
TPOT p50/p90 and E2EL p50, and the largest of them.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from calibrate.backend import probe_backend
from results.jsonsafe import json_safe
from calibrate.probe import PlannedRequest, Runner, Unit
from calibrate.machine import command_line, loadavg, machine_info, utc_now
from calibrate.modeldir import TOKENIZER_VOCAB_SIZE
from calibrate.replay import prepare_units, simulate_units
from live.transport.client import make_session
from sim.latency import LatencyProfile

#: The five statistics compared, as (metric column, percentile).
STATS = (("ttft", 50), ("ttft", 90), ("tpot", 50), ("tpot", 90), ("e2el", 50))
TARGET = 0.10


@dataclass
class CheckSettings:
    min_input: int = 24
    max_input: int = 1800
    min_output: int = 8
    max_output: int = 160
    shared_fraction: float = 0.25
    num_prefixes: int = 3
    prefix_len: int = 384
    load_fractions: tuple[float, ...] = (0.5, 0.8)
    requests_per_level: int = 120
    burst: int = 32
    capacity_rps: float = 0.0  # 0: simulated from the profile
    seed: int = 1234
    time_cap_s: float = 300.0  # per unit
    scrape_interval_s: float = 0.25
    vocab_size: int = TOKENIZER_VOCAB_SIZE


def held_out_requests(s: CheckSettings, rng: np.random.Generator, n: int, first_id: int,
                      prefix_base: int) -> list[PlannedRequest]:
    lens = np.exp(rng.uniform(math.log(s.min_input), math.log(s.max_input), n)).astype(int)
    outs = rng.integers(s.min_output, s.max_output + 1, n)
    shared = rng.random(n) < s.shared_fraction
    which = rng.integers(0, s.num_prefixes, n)
    reqs = []
    for i in range(n):
        L, pid, sl = int(lens[i]), -1, 0
        if shared[i]:
            pid, sl = prefix_base + int(which[i]), s.prefix_len
            L = max(L, s.prefix_len + 32)
        reqs.append(PlannedRequest(first_id + i, L, int(outs[i]), pid, sl, bucket="shared" if shared[i] else "unique"))
    return reqs


def simulated_capacity(profile: LatencyProfile, s: CheckSettings, n: int = 128) -> float:
    """Completed requests per second of ``n`` held-out requests sent at once, simulated."""
    rng = np.random.default_rng([s.seed, 99])
    reqs = held_out_requests(s, rng, n, 0, 0)
    frame = pd.DataFrame({"unit": "capacity", "request_id": [r.request_id for r in reqs],
                          "input_len": [r.input_len for r in reqs], "output_len": [r.output_len for r in reqs],
                          "prefix_id": [r.prefix_id for r in reqs], "shared_len": [r.shared_len for r in reqs],
                          "send_s": 0.0})
    units = prepare_units(frame, profile.engine.block_size, s.vocab_size)
    overhead = profile.request_overhead_s
    _, _, e2el = simulate_units(units, len(frame), profile.model, profile.engine, overhead, profile.front_end)
    return n / float(np.nanmax(e2el))


def plan_check(profile: LatencyProfile, s: CheckSettings) -> tuple[list[Unit], float]:
    cap = s.capacity_rps or simulated_capacity(profile, s)
    rng = np.random.default_rng(s.seed)
    units, next_id, prefix_base = [], 1_000_000, 1_000_000
    for f in s.load_fractions:
        rate = f * cap
        reqs = held_out_requests(s, rng, s.requests_per_level, next_id, prefix_base)
        next_id += len(reqs)
        prefix_base += s.num_prefixes  # each unit starts with its prefixes uncached, as its replay does
        t = np.cumsum(rng.exponential(1.0 / rate, size=len(reqs)))
        for r, at in zip(reqs, t - t[0]):
            r.at_s = float(at)
        units.append(Unit("check", f"poisson-{int(round(f * 100))}", "open", reqs, rate=rate, time_cap_s=s.time_cap_s))
    burst = held_out_requests(s, rng, s.burst, next_id, prefix_base)
    units.append(Unit("check", "burst", "open", burst, concurrency=len(burst), time_cap_s=s.time_cap_s))
    return units, cap


def _pct(v: np.ndarray, q: float) -> float:
    v = v[np.isfinite(v)]
    return float(np.percentile(v, q)) if len(v) else math.nan


def compare(frame: pd.DataFrame) -> dict:
    """Errors per unit and pooled: {scope: {stat: {real, sim, err}}, ..., max_abs_err}."""
    out = {}
    scopes = [(str(k), g) for k, g in frame.groupby("load", sort=False)] + [("all", frame)]
    for name, g in scopes:
        entry = {}
        for metric, q in STATS:
            real = _pct(g[f"{metric}_s"].to_numpy(float), q)
            sim = _pct(g[f"sim_{metric}_s"].to_numpy(float), q)
            err = (sim - real) / real if real and math.isfinite(real) and math.isfinite(sim) else math.nan
            entry[f"{metric}_p{q}"] = {"real_s": real, "sim_s": sim, "err": err}
        errs = [abs(v["err"]) for v in entry.values() if math.isfinite(v["err"])]
        entry["max_abs_err"] = max(errs) if errs else math.nan
        entry["requests"] = int(len(g))
        out[name] = entry
    return out


def max_unit_error(result: dict) -> float:
    """The largest |error| over the load levels (the pooled ``all`` row is left out)."""
    errs = [e["max_abs_err"] for name, e in result.items() if name != "all" and math.isfinite(e["max_abs_err"])]
    return max(errs) if errs else math.nan


def format_table(result: dict) -> str:
    head = f"{'unit':<12}{'n':>5}" + "".join(f"{m.upper()} p{q}".rjust(28) for m, q in STATS) + f"{'max|err|':>10}"
    lines = [head, " " * 17 + "".join("real ms / sim ms / err".rjust(28) for _ in STATS)]
    for name, e in result.items():
        cells = ""
        for m, q in STATS:
            cell = e[f"{m}_p{q}"]
            cells += f"{cell['real_s'] * 1e3:8.1f} / {cell['sim_s'] * 1e3:8.1f} / {cell['err'] * 100:+6.1f}%".rjust(28)
        lines.append(f"{name:<12}{e['requests']:>5}{cells}{e['max_abs_err'] * 100:9.1f}%")
    return "\n".join(lines)


def replay_check(profile: LatencyProfile, measured: pd.DataFrame,
                 vocab_size: int = TOKENIZER_VOCAB_SIZE) -> pd.DataFrame:
    """The measured ok rows with the simulator's TTFT/TPOT/E2EL of the same requests under ``profile``."""
    ok = measured[measured["ok"].astype(str).str.lower().isin(("true", "1"))].reset_index(drop=True)
    units = prepare_units(ok, profile.engine.block_size, vocab_size)
    overhead = profile.request_overhead_s
    s_ttft, s_tpot, s_e2el = simulate_units(units, len(ok), profile.model, profile.engine, overhead,
                                            profile.front_end)
    return ok.assign(sim_ttft_s=s_ttft, sim_tpot_s=s_tpot, sim_e2el_s=s_e2el)


async def run_check(profile: LatencyProfile, url: str, out_dir: str | Path,
                    settings: CheckSettings | None = None, *, progress: bool = True) -> dict:
    s = settings or CheckSettings()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    units, cap = plan_check(profile, s)
    rows: list[dict] = []
    load_before = loadavg()
    async with make_session(concurrency=512) as session:
        info = await probe_backend(session, url)
        if info.block_size > 0 and info.block_size != profile.engine.block_size:
            raise ValueError(f"the backend's block size is {info.block_size} but profile {profile.name} "
                             f"says {profile.engine.block_size}: prefix caching would differ")
        bar = tqdm(total=sum(len(u.requests) for u in units), unit="req", desc="check", disable=not progress)
        try:
            async with Runner(session, info.url, profile.name, s.vocab_size, profile.engine.block_size,
                              num_kv_blocks=info.num_kv_blocks, scrape_interval_s=s.scrape_interval_s,
                              salt=int(np.random.default_rng().integers(1, 1 << 31)), model=info.model,
                              on_done=lambda _r: bar.update(1)) as runner:
                for unit in units:
                    bar.set_description(f"check {unit.name}")
                    rows.extend(await runner.run_unit(unit))
        finally:
            bar.close()
    real = pd.DataFrame(rows)
    extra = {"backend": info.to_dict(), "capacity_rps": cap,
             "units": {u.name: {"rate_rps": u.rate, "planned": len(u.requests)} for u in units},
             "loadavg_before": load_before}
    return write_report(profile, real, out_dir, extra, vocab_size=s.vocab_size)


def write_report(profile: LatencyProfile, measured: pd.DataFrame, out_dir: str | Path, extra: dict,
                 vocab_size: int = TOKENIZER_VOCAB_SIZE) -> dict:
    """Replay ``measured`` under ``profile``, compare, write check.json and check_requests.csv in ``out_dir``.

    Used by a live check and by ``check --replay`` alike, so both leave the same files.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = replay_check(profile, measured, vocab_size)
    failed = int(len(measured) - len(frame))
    result = compare(frame)
    frame.to_csv(out_dir / "check_requests.csv", index=False)
    report = {
        "profile": profile.name,
        **extra,
        "failed_requests": failed,
        "target": TARGET,
        # Per load level: a percentile pooled over a Poisson run and a burst lands on the
        # edge between their distributions and says little; it is reported, not judged.
        "max_abs_err": max_unit_error(result),
        "results": result,
        "machine": machine_info(),
        "loadavg_after": loadavg(),
        "date": utc_now(),
        "command": command_line(),
    }
    (out_dir / "check.json").write_text(json.dumps(json_safe(report, drop_private=True), indent=2) + "\n")
    return report
