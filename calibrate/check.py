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

**Reference requests: is it the model or the machine?** A shared VM's speed
drifts: on the development VM the same request alone on an idle engine took
29% longer in one check than in the next, minutes apart, and the fixed step
cost 2.5x more on one day than on another. A loaded error is evidence about
the model only if the machine ran at the speed it was profiled at. So before
each load and after the last, a few identical requests (``reference_input``
tokens in, ``reference_output`` out, unique prompts) are sent one at a time to
the idle engine; the profile predicts them exactly like the idle requests it
was fitted on. Their real / simulated E2EL, per probe, is the machine's speed
relative to the profile. The check reports it, how much it moved during the
check (``drift``: a check whose machine moved more than the target cannot be
held to the target by any model), and, as a diagnostic beside the verdict,
each load replayed on a machine slowed by the mean of the probes around it
(``LatencyProfile.slowed``: every duration scaled, so queueing follows). The
verdict (``max_abs_err``) stays the unadjusted error.

**Warm-ups: the loaded speed, measured before each load.** An idle request
does not run at a loaded engine's speed: on 2026-12-06 the probes read the
host 3-8% faster than profiled while the loads' own engine steps ran 5-14%
slower. With ``warmup_s`` > 0 each Poisson load is preceded by that many
seconds of other held-out requests at its rate, and the burst by a burst of
as many other requests (the same batch sizes; a Poisson warm-up read one burst
9.6% too fast in campaign 06b). Their engine steps are timed like the loads'
(``calibrate.step_times``). Each load is then also replayed at the speed its
warm-up ran (``warmup_speed``). That speed is known before the load's first
request, so the result is still a prediction, unlike the load replayed at its
own steps' speed (``step_speed``). It is reported beside the verdict, not in
its place.

**Paced loads.** A load planned at 80% of the *profile's* capacity is nearer
94% of an engine running 1.17x slower, where its latencies move about five
points per 1% of speed (campaign 06b). So by default (``pace_to_warmup``) each
Poisson load's arrivals are stretched by its warm-up's speed before it starts:
the same requests, in the same order, at the rate that is its fraction of the
engine's capacity at that moment. Both sides of every comparison replay the
sent times, so the verdict still compares the same arrivals; ``units`` in
check.json records each load's planned rate, the speed it was paced by and the
rate sent.
"""
from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from calibrate.backend import probe_backend
from results.jsonsafe import json_safe
from calibrate.probe import PlannedRequest, Runner, Unit
from calibrate.machine import command_line, loadavg, machine_info, utc_now
from calibrate.modeldir import TOKENIZER_VOCAB_SIZE
from calibrate.procstat import listening_pid
from calibrate.replay import prepare_units, simulate_units
from calibrate.runqueue import difference, snapshot
from calibrate.sampling import finite_percentile, relative_error, sampling_intervals
from calibrate.step_times import (STEPS_FILE, TOKEN_TIMES_FILE, StepTimesError, replay_steps, summarise,
                                  write_token_times)
from live.transport.client import make_session
from sim.latency import LatencyProfile, ProfileError
from sim.speed import SpeedWander

#: The five statistics compared, as (metric column, percentile).
STATS = (("ttft", 50), ("ttft", 90), ("tpot", 50), ("tpot", 90), ("e2el", 50))
TARGET = 0.10
#: Phase of the reference requests that measure the machine's speed (see the module docstring).
REFERENCE_PHASE = "reference"
#: Request ids of reference requests start here (the loads' start at 1,000,000).
REFERENCE_FIRST_ID = 2_000_000
#: Phase of the warm-up before each load (see the module docstring); its unit is "warmup-<load>".
WARMUP_PHASE = "warmup"
WARMUP_PREFIX = "warmup-"
#: Request ids and shared-prefix ids of warm-ups start here, apart from the loads' and the probes'.
WARMUP_FIRST_ID = 3_000_000


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
    #: Requests per Poisson load: one count for every load, or one per load_fractions entry
    #: (a load near capacity needs more of them for its tails to settle; see level_requests).
    requests_per_level: int | tuple[int, ...] = 120
    burst: int = 32
    capacity_rps: float = 0.0  # 0: simulated from the profile
    seed: int = 1234
    #: Seconds after which a burst or reference unit sends nothing more. A Poisson level's
    #: span is fixed by its plan (requests / rate), so it always sends all of it: a longer
    #: check is asked for with requests_per_level, never cut short here.
    time_cap_s: float = 300.0
    scrape_interval_s: float = 0.25
    vocab_size: int = TOKENIZER_VOCAB_SIZE
    #: Reference requests per probe (before each load and after the last; 0: none).
    reference_requests: int = 3
    reference_input: int = 512
    reference_output: int = 32
    #: Seconds of warm-up before each Poisson load, at its rate, to time the loaded engine's speed
    #: just before it; the burst's warm-up is a burst (0: none; see the module docstring).
    warmup_s: float = 0.0
    #: With warm-ups: stretch each Poisson load's arrivals by the speed its warm-up ran, so that
    #: its fraction is of the engine's capacity at that moment (see the module docstring).
    pace_to_warmup: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.requests_per_level, numbers.Integral):
            self.requests_per_level = int(self.requests_per_level)
        else:
            self.requests_per_level = tuple(int(n) for n in self.requests_per_level)
            if len(self.requests_per_level) != len(self.load_fractions):
                raise ValueError(f"requests_per_level has {len(self.requests_per_level)} counts "
                                 f"{self.requests_per_level} for {len(self.load_fractions)} loads "
                                 f"{self.load_fractions}: give one count, or one per load")
        if min(self.level_requests(), default=1) < 1 or self.burst < 1:
            raise ValueError(f"requests_per_level and burst must be >= 1, got {self.requests_per_level} "
                             f"and {self.burst}")
        if not (self.warmup_s == 0 or 1 <= self.warmup_s <= 3600):
            raise ValueError(f"warmup_s must be 0 (no warm-up) or 1-3600 seconds, got {self.warmup_s}")
        if self.reference_requests < 0:
            raise ValueError(f"reference_requests must be >= 0, got {self.reference_requests}")
        if self.reference_requests and (self.reference_input < 1 or self.reference_output < 2):
            raise ValueError("reference requests need reference_input >= 1 and reference_output >= 2 "
                             f"(a TPOT), got {self.reference_input} and {self.reference_output}")

    def level_requests(self) -> tuple[int, ...]:
        """The requests each Poisson load sends, in load_fractions' order."""
        n = self.requests_per_level
        return (n,) * len(self.load_fractions) if isinstance(n, int) else n


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


def planned_frame(unit: str | list[str], reqs: list[PlannedRequest]) -> pd.DataFrame:
    """Planned requests as the rows ``calibrate.replay.prepare_units`` replays: sent at their
    ``at_s``, in ``unit`` (one name, or one per request)."""
    return pd.DataFrame({"unit": unit, "request_id": [r.request_id for r in reqs],
                         "input_len": [r.input_len for r in reqs], "output_len": [r.output_len for r in reqs],
                         "prefix_id": [r.prefix_id for r in reqs], "shared_len": [r.shared_len for r in reqs],
                         "send_s": [r.at_s for r in reqs]})


def simulated_capacity(profile: LatencyProfile, s: CheckSettings, n: int = 128) -> float:
    """Completed requests per second of ``n`` held-out requests sent at once, simulated."""
    rng = np.random.default_rng([s.seed, 99])
    frame = planned_frame("capacity", held_out_requests(s, rng, n, 0, 0))
    units = prepare_units(frame, profile.engine.block_size, s.vocab_size)
    overhead = profile.request_overhead_s
    _, _, e2el = simulate_units(units, len(frame), profile.model, profile.engine, overhead, profile.front_end)
    return n / float(np.nanmax(e2el))


def plan_check(profile: LatencyProfile, s: CheckSettings) -> tuple[list[Unit], float]:
    cap = s.capacity_rps or simulated_capacity(profile, s)
    rng = np.random.default_rng(s.seed)
    units, next_id, prefix_base = [], 1_000_000, 1_000_000
    for f, n in zip(s.load_fractions, s.level_requests()):
        rate = f * cap
        reqs = held_out_requests(s, rng, n, next_id, prefix_base)
        next_id += len(reqs)
        prefix_base += s.num_prefixes  # each unit starts with its prefixes uncached, as its replay does
        t = np.cumsum(rng.exponential(1.0 / rate, size=len(reqs)))
        for r, at in zip(reqs, t - t[0]):
            r.at_s = float(at)
        # No time cap: the plan's arrivals already fix how long the level sends.
        units.append(Unit("check", f"poisson-{int(round(f * 100))}", "open", reqs, rate=rate))
    burst = held_out_requests(s, rng, s.burst, next_id, prefix_base)
    units.append(Unit("check", "burst", "open", burst, concurrency=len(burst), time_cap_s=s.time_cap_s))
    return units, cap


def reference_unit(label: str, first_id: int, s: CheckSettings) -> Unit:
    """One probe: ``s.reference_requests`` identical reference requests, one at a time to the idle
    engine (the speed gate of ``calibrate.speed_gate`` sends the same)."""
    reqs = [PlannedRequest(first_id + k, s.reference_input, s.reference_output, bucket=REFERENCE_PHASE)
            for k in range(s.reference_requests)]
    return Unit(REFERENCE_PHASE, label, "sequential", reqs, time_cap_s=s.time_cap_s)


def with_reference_probes(units: list[Unit], s: CheckSettings) -> list[Unit]:
    """``units`` with a probe of reference requests before each and after the last.

    Probe ``before-<load>`` precedes that load, ``after`` follows the last: the
    probes around a load are the one before it and the next one.
    """
    if not s.reference_requests:
        return list(units)
    out: list[Unit] = []
    labels = [f"before-{u.name}" for u in units] + ["after"]
    for i, label in enumerate(labels):
        out.append(reference_unit(label, REFERENCE_FIRST_ID + i * s.reference_requests, s))
        if i < len(units):
            out.append(units[i])
    return out


def warmup_units(loads: list[Unit], s: CheckSettings) -> list[Unit]:
    """One warm-up per load, drawn apart from the loads' requests (own seed stream, ids and shared
    prefixes), their token times kept so their engine steps are timed: ``s.warmup_s`` seconds of
    held-out requests at a Poisson load's rate, and a burst of as many requests before a burst.
    [] without warm-ups."""
    if not s.warmup_s:
        return []
    rng = np.random.default_rng([s.seed, 7])
    out, next_id = [], WARMUP_FIRST_ID
    for i, load in enumerate(loads):
        prefixes = WARMUP_FIRST_ID + i * s.num_prefixes
        name = WARMUP_PREFIX + load.name
        if not math.isfinite(load.rate):  # a burst: the same batch sizes, not a stream at some rate
            reqs = held_out_requests(s, rng, len(load.requests), next_id, prefixes)
            out.append(Unit(WARMUP_PHASE, name, "open", reqs, concurrency=len(reqs), time_cap_s=s.time_cap_s,
                            keep_token_times=True))
        else:
            n = max(1, int(round(load.rate * s.warmup_s)))
            reqs = held_out_requests(s, rng, n, next_id, prefixes)
            t = np.cumsum(rng.exponential(1.0 / load.rate, size=n))
            for r, at in zip(reqs, t - t[0]):
                r.at_s = float(at)
            out.append(Unit(WARMUP_PHASE, name, "open", reqs, rate=load.rate, keep_token_times=True))
        next_id += len(reqs)
    return out


def paced(load: Unit, speed: float) -> Unit:
    """``load`` on an engine ``speed`` times slower than the profile: a Poisson load's same
    requests with every arrival ``speed`` times later (its rate divided by it); a burst as it is."""
    if not (math.isfinite(speed) and speed > 0):
        raise ValueError(f"a load is paced by a positive finite speed, got {speed}")
    if not math.isfinite(load.rate):
        return load
    return replace(load, requests=[replace(r, at_s=r.at_s * speed) for r in load.requests], rate=load.rate / speed)


def warmup_speed(profile: LatencyProfile, rows: list[dict], times: dict[int, list[float]]) -> float | None:
    """A warm-up's matched busy steps' real time over the model's (``busy_ratios``), from its
    measured rows and token times; None when none of its steps could be timed."""
    frame = pd.DataFrame(rows)
    if frame.empty or not times:
        return None
    try:
        steps = replay_steps(profile, frame, times)
    except StepTimesError:  # token times that do not fit the rows: no speed, and the load goes unpaced
        return None
    return next(iter(busy_ratios(summarise(steps)).values()), None)


def with_warmups(units: list[Unit], warmups: list[Unit]) -> list[Unit]:
    """``units`` with each warm-up right before the load it is named after (after that load's probe)."""
    by_load = {w.name[len(WARMUP_PREFIX):]: w for w in warmups}
    out: list[Unit] = []
    for u in units:
        if u.phase != REFERENCE_PHASE and u.name in by_load:
            out.append(by_load[u.name])
        out.append(u)
    return out


def check_units(loads: list[Unit], s: CheckSettings) -> list[Unit]:
    """Every unit a check sends, in order: before each load its reference probe and its warm-up,
    and a last probe after them (what ``run_check`` sends and ``calibrate.check_duration`` times)."""
    return with_warmups(with_reference_probes(loads, s), warmup_units(loads, s))


def compare(frame: pd.DataFrame) -> dict:
    """Errors per unit and pooled: {scope: {stat: {real, sim, err}}, ..., max_abs_err}."""
    out = {}
    frame = _loads_only(frame)
    scopes = [(str(k), g) for k, g in frame.groupby("load", sort=False)] + [("all", frame)]
    for name, g in scopes:
        entry = {}
        for metric, q in STATS:
            real = finite_percentile(g[f"{metric}_s"].to_numpy(float), q)
            sim = finite_percentile(g[f"sim_{metric}_s"].to_numpy(float), q)
            err = relative_error(real, sim)
            entry[f"{metric}_p{q}"] = {"real_s": real, "sim_s": sim, "err": err}
        errs = [abs(v["err"]) for v in entry.values() if math.isfinite(v["err"])]
        entry["max_abs_err"] = max(errs) if errs else math.nan
        entry["requests"] = int(len(g))
        out[name] = entry
    return out


def reference_speed(frame: pd.DataFrame) -> dict | None:
    """The machine's speed relative to the profile, from the reference probes (None: no probes).

    Per probe, in the order they ran: the median real / simulated E2EL, TTFT
    and TPOT of its requests (> 1: the machine ran slower than the profile
    predicts for a request alone). ``drift``: the largest E2EL ratio over the
    smallest, minus 1.
    """
    if "phase" not in frame:
        return None
    ref = frame[frame["phase"] == REFERENCE_PHASE]
    if ref.empty:
        return None
    probes = {}
    for label, g in ref.groupby("load", sort=False):
        probes[str(label)] = {
            "requests": int(len(g)),
            **{f"{m}_ratio": float(np.nanmedian(g[f"{m}_s"].to_numpy(float) / g[f"sim_{m}_s"].to_numpy(float)))
               for m in ("e2el", "ttft", "tpot")},
        }
    e2el = [p["e2el_ratio"] for p in probes.values() if math.isfinite(p["e2el_ratio"])]
    return {"input_len": int(ref["input_len"].iloc[0]), "output_len": int(ref["output_len"].iloc[0]),
            "probes": probes,
            "e2el_ratio": float(np.median(e2el)) if e2el else math.nan,
            "drift": max(e2el) / min(e2el) - 1.0 if e2el else math.nan}


def load_speed_factors(reference: dict, loads: list[str]) -> dict[str, float]:
    """Per load: the mean E2EL ratio of the probe before it and the next probe (missing ones skipped)."""
    labels = list(reference["probes"])
    out = {}
    for load in loads:
        before = f"before-{load}"
        if before not in labels:
            continue
        i = labels.index(before)
        around = [reference["probes"][x]["e2el_ratio"] for x in labels[i:i + 2]]
        around = [r for r in around if math.isfinite(r) and r > 0]
        if around:
            out[load] = float(np.mean(around))
    return out


def speed_adjusted(profile: LatencyProfile, measured: pd.DataFrame, factors: dict[str, float],
                   vocab_size: int = TOKENIZER_VOCAB_SIZE) -> pd.DataFrame:
    """Each load's rows replayed on the profile slowed by that load's factor (loads without one are left out)."""
    parts = []
    for load, factor in factors.items():
        rows = measured[(measured["load"] == load) & (measured["phase"] != REFERENCE_PHASE)]
        if len(rows):
            parts.append(replay_check(profile.slowed(factor), rows, vocab_size))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def errors_at_speeds(profile: LatencyProfile, frame: pd.DataFrame, factors: dict[str, float],
                     vocab_size: int = TOKENIZER_VOCAB_SIZE) -> dict:
    """``compare`` of the loads in ``factors`` replayed at those speeds ({}: none could be)."""
    try:
        replayed = speed_adjusted(profile, frame.drop(columns=[c for c in frame if c.startswith("sim_")]),
                                  factors, vocab_size)
    except ProfileError:
        return {}
    return compare(replayed) if len(replayed) else {}


#: Replays per speed band: the trace read from this many evenly spaced offsets.
SPEED_REALISATIONS = 8


def error_beyond(real: float, lo: float, hi: float) -> float:
    """How far ``real`` lies outside the simulated band [lo, hi], as the error of its nearer edge
    ((edge - real) / real; 0 inside the band, NaN where something is missing)."""
    if not all(math.isfinite(v) for v in (real, lo, hi)) or real == 0:
        return math.nan
    if lo <= real <= hi:
        return 0.0
    edge = lo if real < lo else hi
    return (edge - real) / real


def speed_band(profile: LatencyProfile, measured: pd.DataFrame, wander: SpeedWander,
               realisations: int = SPEED_REALISATIONS, vocab_size: int = TOKENIZER_VOCAB_SIZE) -> dict:
    """Each statistic's range over ``realisations`` replays under the machine's speed wander.

    The trace is read from offsets spread evenly over its period, so each replay
    meets the dips at other moments. Per load and statistic: the lowest and highest
    simulated value, the real one, and how far the real one lies beyond the band
    (``error_beyond``); ``max_abs_err_beyond`` is the largest over the loads. An error
    inside the band is one the machine's own wander can produce; one beyond it is the
    model's (or a wander the trace did not catch).
    """
    if realisations < 1:
        raise ValueError(f"realisations must be >= 1, got {realisations}")
    runs = [compare(replay_check(profile, measured, vocab_size, wander.shifted(k * wander.period_s / realisations)))
            for k in range(realisations)]
    results: dict = {}
    for load in runs[0]:
        if load == "all":
            continue
        entry: dict = {}
        for metric, q in STATS:
            key = f"{metric}_p{q}"
            sims = [r[load][key]["sim_s"] for r in runs if load in r and math.isfinite(r[load][key]["sim_s"])]
            real = runs[0][load][key]["real_s"]
            lo, hi = (min(sims), max(sims)) if sims else (math.nan, math.nan)
            entry[key] = {"real_s": real, "sim_lo_s": lo, "sim_hi_s": hi, "err_beyond": error_beyond(real, lo, hi)}
        errs = [abs(v["err_beyond"]) for v in entry.values() if math.isfinite(v["err_beyond"])]
        entry["max_abs_err_beyond"] = max(errs) if errs else math.nan
        results[load] = entry
    beyond = [e["max_abs_err_beyond"] for e in results.values() if math.isfinite(e["max_abs_err_beyond"])]
    return {"window_s": wander.window_s, "period_s": wander.period_s, "cv": wander.cv,
            "realisations": realisations, "results": results,
            "max_abs_err_beyond": max(beyond) if beyond else math.nan}


def format_speed_band(band: dict | None) -> str:
    """Lines on the speed band: per load the largest error beyond it; '' without a band."""
    if not band:
        return ""
    per_load = ", ".join(f"{load} {e['max_abs_err_beyond'] * 100:.1f}%" for load, e in band["results"].items())
    return (f"with the machine's speed wander (trace of {band['period_s']:g} s, cv {band['cv'] * 100:.1f}%, "
            f"{band['realisations']} replays): largest error beyond the band {band['max_abs_err_beyond'] * 100:.1f}% "
            f"({per_load}; 0 means the machine's own wander can explain the error)")


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


def step_speed_check(profile: LatencyProfile, frame: pd.DataFrame, steps: dict,
                     vocab_size: int = TOKENIZER_VOCAB_SIZE) -> dict | None:
    """Each load replayed on the profile slowed by the speed its own steps ran at.

    The factor is the load's matched busy steps' real time over the model's time for the
    same steps (``calibrate.step_times``): the machine's speed *during* that load, for the
    compositions it ran, rather than a probe's before and after. What error remains at
    that speed is the model's queueing and balance of terms, not the machine's speed.
    None when no load has a factor.
    """
    loads = set(_loads_only(frame)["load"].astype(str))
    return _replayed_at(profile, frame, {load: r for load, r in busy_ratios(steps).items() if load in loads},
                        vocab_size)


def _replayed_at(profile: LatencyProfile, frame: pd.DataFrame, factors: dict[str, float],
                 vocab_size: int) -> dict | None:
    """{factors, max_abs_err, results} of the loads replayed at ``factors``; None when none could be."""
    results = errors_at_speeds(profile, frame, factors, vocab_size)
    if not results:
        return None
    return {"factors": factors, "max_abs_err": max_unit_error(results), "results": results}


def busy_ratios(steps: dict) -> dict[str, float]:
    """Per unit with timed steps: its matched busy steps' real time over the model's."""
    return {name: e["real_busy_s"] / e["predicted_busy_s"] for name, e in steps["loads"].items()
            if e["predicted_busy_s"] > 0 and e["real_busy_s"] > 0}


def warmup_speed_check(profile: LatencyProfile, frame: pd.DataFrame, steps: dict,
                       vocab_size: int = TOKENIZER_VOCAB_SIZE) -> dict | None:
    """Each load replayed on the profile slowed by the speed its warm-up's steps ran at.

    The warm-up ran just before the load, so this speed is known before the load starts:
    the errors are a prediction made with the engine's loaded speed of that moment. None
    when no load had a warm-up with timed steps.
    """
    ratios = busy_ratios(steps)
    loads = dict.fromkeys(_loads_only(frame)["load"].astype(str))  # in the order they ran
    factors = {load: ratios[WARMUP_PREFIX + load] for load in loads if WARMUP_PREFIX + load in ratios}
    return _replayed_at(profile, frame, factors, vocab_size)


def _per_load_at_speeds(e: dict) -> str:
    """"poisson-50 5.5% at 1.239x, ..." of a ``_replayed_at`` result."""
    return ", ".join(f"{name} {r['max_abs_err'] * 100:.1f}% at {e['factors'][name]:.3f}x"
                     for name, r in e["results"].items() if name != "all")


def format_step_speed(report: dict) -> str:
    """One line: the largest error with each load replayed at its own steps' speed; '' without it."""
    e = report.get("step_speed")
    if not e:
        return ""
    return (f"largest error with each load replayed at the speed its own steps ran (diagnostic): "
            f"{e['max_abs_err'] * 100:.1f}% ({_per_load_at_speeds(e)})")


def format_warmup_speed(report: dict) -> str:
    """One line: the largest error with each load replayed at its warm-up's speed; '' without warm-ups."""
    e = report.get("warmup_speed")
    if not e:
        return ""
    per_load = _per_load_at_speeds(e)
    target = report.get("target", TARGET)
    verdict = "within" if e["max_abs_err"] <= target else "beyond"
    return (f"largest error with each load replayed at the speed its warm-up ran, measured before the load "
            f"(a prediction): {e['max_abs_err'] * 100:.1f}%, {verdict} the {target * 100:.0f}% target ({per_load})")


def format_pacing(report: dict) -> str:
    """One line: each Poisson load's planned and sent rate where its warm-up paced it; '' where none was."""
    units = {name: u for name, u in (report.get("units") or {}).items() if u.get("paced_by") is not None}
    if not units:
        return ""
    return "loads paced by their warm-up's speed: " + ", ".join(
        f"{name} {u['planned_rate_rps']:.3g} -> {u['rate_rps']:.3g} req/s ({u['paced_by']:.3f}x)"
        for name, u in units.items())


def format_reference(report: dict) -> str:
    """Lines on the machine's speed (reference probes) and the speed-adjusted errors; '' without probes."""
    ref = report.get("reference")
    if not ref:
        return ""
    probes = ", ".join(f"{label} {p['e2el_ratio']:.2f}" for label, p in ref["probes"].items())
    lines = [f"machine vs profile (reference requests {ref['input_len']} in / {ref['output_len']} out, "
             f"real / simulated E2EL): {probes}; drift during the check {ref['drift'] * 100:.1f}%"
             + (" (more than the target: no model can be held to it on this run)"
                if ref["drift"] > report.get("target", TARGET) else "")]
    adj = report.get("max_abs_err_speed_adjusted", math.nan)
    if adj == adj:
        per_load = ", ".join(f"{name} {e['max_abs_err'] * 100:.1f}%"
                             for name, e in (report.get("results_speed_adjusted") or {}).items() if name != "all")
        lines.append(f"largest error with each load replayed at its probes' speed (diagnostic): "
                     f"{adj * 100:.1f}% ({per_load})")
    return "\n".join(lines)


#: Columns the replay needs in every row of a check's check_requests.csv, failed requests included.
MEASURED_COLUMNS = ("load", "ok", "input_len", "send_s")


def read_measured(path: str | Path) -> pd.DataFrame:
    """An earlier check's check_requests.csv, refused when it ends mid-line or a row lacks what
    the replay needs (a truncated copy would otherwise count its last request as failed and go on)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--replay {path} does not exist (a check_requests.csv of an earlier check)")
    with path.open("rb") as f:
        f.seek(0, 2)
        if f.tell():
            f.seek(-1, 2)
            if f.read(1) != b"\n":
                raise ValueError(f"--replay {path} ends in the middle of a line (a truncated copy?)")
    try:
        measured = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"--replay {path} is not a check_requests.csv: {e}") from None
    missing = [c for c in MEASURED_COLUMNS if c not in measured.columns]
    if missing:
        raise ValueError(f"--replay {path} lacks the columns {', '.join(missing)} of a check_requests.csv")
    holes = measured.index[measured[list(MEASURED_COLUMNS)].isna().any(axis=1)]
    if len(holes):
        raise ValueError(f"--replay {path}: line {int(holes[0]) + 2} lacks a value of "
                         f"{', '.join(MEASURED_COLUMNS)} ({len(holes)} such row(s))")
    return measured


def replay_check(profile: LatencyProfile, measured: pd.DataFrame,
                 vocab_size: int = TOKENIZER_VOCAB_SIZE, speed: SpeedWander | None = None) -> pd.DataFrame:
    """The measured ok rows with the simulator's TTFT/TPOT/E2EL of the same requests under ``profile``
    (on a machine whose speed wanders so, when ``speed`` is given)."""
    ok = measured[measured["ok"].astype(str).str.lower().isin(("true", "1"))].reset_index(drop=True)
    units = prepare_units(ok, profile.engine.block_size, vocab_size)
    overhead = profile.request_overhead_s
    s_ttft, s_tpot, s_e2el = simulate_units(units, len(ok), profile.model, profile.engine, overhead,
                                            profile.front_end, speed)
    return ok.assign(sim_ttft_s=s_ttft, sim_tpot_s=s_tpot, sim_e2el_s=s_e2el)


async def run_check(profile: LatencyProfile, url: str, out_dir: str | Path,
                    settings: CheckSettings | None = None, *, progress: bool = True,
                    speed: SpeedWander | None = None) -> dict:
    s = settings or CheckSettings()
    out_dir = Path(out_dir)  # made by write_report: a check that cannot start leaves nothing
    loads, cap = plan_check(profile, s)
    # Every token's arrival of the loads (not the probes) is kept: calibrate.step_times times each engine step.
    loads = [replace(u, keep_token_times=True) for u in loads]
    units = check_units(loads, s)
    rows: list[dict] = []
    times: dict[int, list[float]] = {}
    load_names = {u.name for u in loads}
    # Per load: the rate planned from the profile's capacity, and the rate sent (paced_by: the speed of
    # its warm-up that stretched its arrivals; None when it was not paced).
    sent = {u.name: {"planned_rate_rps": u.rate, "rate_rps": u.rate, "paced_by": None, "planned": len(u.requests)}
            for u in loads}
    runqueue: dict[str, dict] = {}  # load -> the server's processes' run and run-queue wait (calibrate.runqueue)
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
                server = listening_pid(info.url)  # None: not on this machine, so no run-queue figures
                pace: float | None = None  # the speed the last warm-up ran, for the load after it
                for unit in units:
                    bar.set_description(f"check {unit.name}")
                    if unit.name in load_names and pace is not None:  # only a Poisson load's warm-up sets one
                        unit = paced(unit, pace)
                        sent[unit.name].update(rate_rps=unit.rate, paced_by=pace)
                    before = snapshot(server) if server is not None else None
                    done = await runner.run_unit(unit)
                    rows.extend(done)
                    if before is not None and unit.name in load_names:
                        runqueue[unit.name] = difference(before, snapshot(server))
                    pace = None
                    if unit.phase == WARMUP_PHASE and s.pace_to_warmup and math.isfinite(unit.rate):
                        ids = {r["request_id"] for r in done}
                        pace = warmup_speed(profile, done, {rid: [t - runner.t0 for t in ts]
                                                            for rid, ts in runner.token_times.items() if rid in ids})
                times = {rid: [t - runner.t0 for t in ts] for rid, ts in runner.token_times.items()}
        finally:
            bar.close()
    real = pd.DataFrame(rows)
    extra = {"backend": info.to_dict(), "capacity_rps": cap, "units": sent,
             "warmup_s": s.warmup_s, "pace_to_warmup": bool(s.warmup_s and s.pace_to_warmup),
             "loadavg_before": load_before, "runqueue": runqueue or None}
    return write_report(profile, real, out_dir, extra, vocab_size=s.vocab_size, speed=speed, token_times=times)


def _loads_only(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of the loads: no reference probe, no warm-up."""
    return frame[~frame["phase"].isin((REFERENCE_PHASE, WARMUP_PHASE))] if "phase" in frame else frame


def write_report(profile: LatencyProfile, measured: pd.DataFrame, out_dir: str | Path, extra: dict,
                 vocab_size: int = TOKENIZER_VOCAB_SIZE, speed: SpeedWander | None = None,
                 token_times: dict[int, list[float]] | None = None) -> dict:
    """Replay ``measured`` under ``profile``, compare, write check.json and check_requests.csv in ``out_dir``.

    Used by a live check and by ``check --replay`` alike, so both leave the same files.
    With ``speed`` (the machine's measured wander) the report also has ``speed_band``;
    with ``token_times`` (request id -> token arrivals) it has ``steps``, each engine
    step's real duration against the model's (``calibrate.step_times``), and the folder
    has token_times.json and steps.csv.
    """
    out_dir = Path(out_dir)
    # The steps first: token times that are not these requests' fail before anything is written.
    step_frame = replay_steps(profile, measured, token_times) if token_times else None
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = replay_check(profile, measured, vocab_size)
    failed = int(len(measured) - len(frame))
    result = compare(frame)
    frame.to_csv(out_dir / "check_requests.csv", index=False)
    reference = reference_speed(frame)
    steps = None
    if step_frame is not None:
        step_frame.to_csv(out_dir / STEPS_FILE, index=False)
        steps = summarise(step_frame, profile)
    adjusted: dict = {}
    if reference is not None:
        loads = [name for name in result if name != "all"]
        factors = load_speed_factors(reference, loads)
        reference["load_factors"] = factors
        adjusted = errors_at_speeds(profile, frame, factors, vocab_size)
    report = {
        "profile": profile.name,
        **extra,
        "failed_requests": failed,
        "target": TARGET,
        # Per load level: a percentile pooled over a Poisson run and a burst lands on the
        # edge between their distributions and says little; it is reported, not judged.
        "max_abs_err": max_unit_error(result),
        "results": result,
        # The machine's speed against the profile (reference probes), and the errors with each
        # load replayed at the speed its probes measured: a diagnostic, not the verdict.
        "reference": reference,
        "max_abs_err_speed_adjusted": max_unit_error(adjusted) if adjusted else math.nan,
        "results_speed_adjusted": adjusted or None,
        # How far the machine's own speed wander moves each statistic: a diagnostic, not the verdict.
        "speed_band": speed_band(profile, measured, speed, vocab_size=vocab_size) if speed is not None else None,
        # Each engine step of the loads against the model's step time, and each load replayed at the
        # speed its own steps ran: diagnostics, not the verdict.
        "steps": steps,
        "step_speed": step_speed_check(profile, frame, steps, vocab_size) if steps else None,
        # Each load replayed at the speed its warm-up's steps ran, just before it: a prediction beside the
        # verdict, not the verdict (the verdict is the profile's speed as fitted).
        "warmup_speed": warmup_speed_check(profile, frame, steps, vocab_size) if steps else None,
        # How far the errors move with another draw of the loads' requests: a diagnostic, not the verdict.
        "sampling": sampling_intervals(_loads_only(frame), STATS),
        "machine": machine_info(),
        "loadavg_after": loadavg(),
        "date": utc_now(),
        "command": command_line(),
    }
    if token_times:
        write_token_times(out_dir / TOKEN_TIMES_FILE, token_times)
    (out_dir / "check.json").write_text(json.dumps(json_safe(report, drop_private=True), indent=2) + "\n")
    return report
