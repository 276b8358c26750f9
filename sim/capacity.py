"""Capacity search: per strategy and fleet, the highest load that still meets the SLO.

``python -m sim SCENARIO --capacity [--slo-attainment 0.9]``. For each fleet (a
grid point with the load axis taken out) and each strategy, the load knob of the
arrival pattern is searched for the highest value at which SLO attainment (the
share of requests sent that meet every SLO, ``results.metrics``), averaged over
the scenario's seeds, is at least the target:

- the knob is ``arrivals.rate`` (poisson, gamma, constant), ``target_rate``
  (replay), ``peak_rate`` with ``base_rate`` scaled alongside (burst), or
  ``concurrency`` (the number of closed-loop clients);
- from the scenario's value (the largest if it is a grid axis), the load is
  doubled until the target is missed, or halved until it is met (a bracket);
- then bisected (geometric mean of the two ends; whole clients for concurrency)
  until the bracket is narrower than ``rel_tol`` of its lower end.

The answer is the bracket ``[lo, hi]``: at ``lo`` the mean attainment over seeds
met the target, at ``hi`` it did not; the capacity lies between (attainment
need not be monotone in load, so a bracket is the honest claim). Every probe's
per-seed attainment is kept (``capacity.json``), so the curve of attainment
against load is in the report. Seeds use common random numbers: a seed's trace
at two loads has the same requests, only the times scale.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

#: The knob searched per arrival pattern (``arrivals.<key>``) and its unit.
KNOBS = {
    "poisson": ("rate", "req/s"), "gamma": ("rate", "req/s"), "constant": ("rate", "req/s"),
    "burst": ("peak_rate", "req/s (peak)"), "replay": ("target_rate", "req/s"),
    "concurrency": ("concurrency", "clients"),
}
#: How far the bracket search may double or halve the starting load.
MAX_DOUBLINGS = 12


@dataclass(frozen=True)
class CapacityOptions:
    """How the search runs: the attainment target, the bracket's relative width, a probe cap."""

    target: float = 0.9
    rel_tol: float = 0.05
    max_probes: int = 30

    def validate(self) -> None:
        if not 0 < self.target <= 1:
            raise ValueError(f"--slo-attainment must be in (0, 1], got {self.target}")
        if not 0 < self.rel_tol < 1:
            raise ValueError(f"--capacity-tolerance must be in (0, 1), got {self.rel_tol}")


@dataclass
class Probe:
    load: float
    attainment: list[float]  # per seed, in seed order

    @property
    def mean(self) -> float:
        a = np.asarray(self.attainment, dtype=float)
        return float(np.nanmean(a)) if np.isfinite(a).any() else math.nan

    def passed(self, target: float) -> bool:
        return self.mean >= target  # NaN (nothing sent) never passes


@dataclass
class Search:
    """One strategy on one fleet: the bracket found and every probe made."""

    fleet_id: str
    strategy: str
    lo: float = math.nan  # highest load that met the target (NaN: none did)
    hi: float = math.nan  # lowest load above it that missed (NaN: none did)
    probes: list[Probe] = field(default_factory=list)
    note: str = ""

    def to_json(self, target: float) -> dict[str, Any]:
        return {"fleet_id": self.fleet_id, "strategy": self.strategy, "capacity": self.lo,
                "lo": self.lo, "hi": self.hi, "note": self.note,
                "probes": [{"load": p.load, "attainment": p.attainment, "mean": p.mean,
                            "passed": p.passed(target)} for p in self.probes]}


def bracket_search(evaluate: Callable[[float], list[float]], start: float, opts: CapacityOptions,
                   *, integer: bool = False, search: Search | None = None,
                   upper: float = math.inf) -> Search:
    """Find ``[lo, hi]`` around the highest load whose mean attainment meets the target.

    ``evaluate(load)`` returns the attainment of each seed at ``load``. Pure: the
    simulator is only behind ``evaluate``, so the rule is tested on its own.
    ``upper``: a load past which nothing changes (more clients than the trace has
    sessions); meeting the target there ends the search.
    """
    out = search or Search("", "")
    target = opts.target
    seen: dict[float, Probe] = {}

    def probe(x: float) -> bool:
        if x not in seen:
            if len(out.probes) >= opts.max_probes:
                raise _Exhausted
            p = Probe(float(x), [float(a) for a in evaluate(x)])
            seen[x] = p
            out.probes.append(p)
        return seen[x].passed(target)

    def down(x: float) -> float:
        return max(1, x // 2) if integer else x / 2

    def up(x: float) -> float:
        return min(x * 2, upper)

    x = max(1, int(round(start))) if integer else float(start)
    x = min(x, upper)
    try:
        if probe(x):
            lo = x
            for _ in range(MAX_DOUBLINGS):
                if x >= upper:
                    out.lo, out.note = lo, (f"met the target at {upper:g}, where every session of "
                                            "the trace runs at once: more clients add no load")
                    return out
                x = up(x)
                if not probe(x):
                    break
                lo = x
            else:
                out.lo, out.note = lo, (f"met the target at every load tried, up to {lo:g}; "
                                        "the capacity is higher")
                return out
            hi = x
        else:
            hi = x
            for _ in range(MAX_DOUBLINGS):
                if integer and x == 1:
                    out.hi, out.note = hi, "even one client misses the target"
                    return out
                x = down(x)
                if probe(x):
                    break
                hi = x
            else:
                out.hi, out.note = hi, (f"missed the target at every load tried, down to {hi:g}; "
                                        "the capacity is lower")
                return out
            lo = x
        while _wide(lo, hi, opts.rel_tol, integer):
            mid = (lo + hi) // 2 if integer else math.sqrt(lo * hi)
            if probe(mid):
                lo = mid
            else:
                hi = mid
        out.lo, out.hi = lo, hi
    except _Exhausted:
        passed = [p.load for p in out.probes if p.passed(target)]
        failed = [p.load for p in out.probes if not p.passed(target)]
        out.lo = max(passed) if passed else math.nan
        above = [f for f in failed if not passed or f > out.lo]
        out.hi = min(above) if above else math.nan
        out.note = f"stopped after {opts.max_probes} probes"
    return out


class _Exhausted(Exception):
    pass


def _wide(lo: float, hi: float, rel_tol: float, integer: bool) -> bool:
    if integer:
        return hi - lo > max(1, math.floor(rel_tol * lo))
    return (hi - lo) > rel_tol * lo


# --- fleets and probes on the simulator ------------------------------------------------------
@dataclass(frozen=True)
class Fleet:
    """A grid point without its load axis: what a capacity is found for."""

    fleet_id: str
    label: str
    scenario: Any  # scenarios.Scenario, every axis resolved
    knob: str
    unit: str
    start: float


def fleets(scenario, points) -> list[Fleet]:
    """The fleets of a scenario's grid: points grouped by every axis but the load knob."""
    out: dict[str, Fleet] = {}
    loads: dict[str, list[float]] = {}
    for p in points:
        pattern = p.scenario.arrivals.pattern
        knob, unit = KNOBS[pattern]
        keep = {k: v for k, v in p.axes.items()
                if k not in (f"arrivals.{knob}", "arrivals.base_rate")}
        fid = _fleet_id(keep)
        value = float(getattr(p.scenario.arrivals, knob))
        loads.setdefault(fid, []).append(value)
        if fid not in out:
            label = ", ".join(f"{k.split('.', 2)[-1] if k.startswith('cluster') else k.split('.')[-1]}"
                              f"={v}" for k, v in keep.items()) or "the fleet"
            out[fid] = Fleet(fid, label, p.scenario, knob, unit, value)
    result = []
    for fid, fleet in out.items():
        start = max(loads[fid])
        if fleet.knob == "target_rate" and start <= 0:
            start = 1.0
        result.append(replace(fleet, start=start))
    return result


def _fleet_id(axes: dict[str, Any]) -> str:
    from scenarios.grid import point_id

    return point_id(axes)


def at_load(scenario, knob: str, load: float):
    """The scenario with its load knob set (burst: ``base_rate`` keeps its ratio to the peak)."""
    arr = scenario.arrivals
    if knob == "concurrency":
        arr = replace(arr, concurrency=int(load))
    elif knob == "peak_rate":
        ratio = arr.base_rate / arr.peak_rate if arr.peak_rate else 0.0
        arr = replace(arr, peak_rate=float(load), base_rate=float(load) * ratio)
    elif knob == "target_rate":
        arr = replace(arr, target_rate=float(load), time_scale=1.0)
    else:
        arr = replace(arr, **{knob: float(load)})
    return replace(scenario, arrivals=arr)


def attainment(scenario, strategy, seed: int) -> float:
    """SLO attainment of one strategy on one seed of ``scenario`` (simulated)."""
    import routing
    from results.metrics import unit_metrics
    from sim.cluster import simulate
    from sim.fleet import cluster_config
    from workload import build_trace

    trace = build_trace(asdict(scenario.workload), asdict(scenario.arrivals), seed=seed,
                        num_requests=scenario.num_requests, duration_s=scenario.duration_s)
    config = cluster_config(scenario)
    result = simulate(trace, routing.build(strategy.name, seed=seed, **strategy.params), config,
                      seed=seed)
    slo = {k: v for k, v in asdict(scenario.slo).items() if v is not None}
    return unit_metrics(result.records, slo, bootstrap=False).values["slo_attainment"]


@dataclass
class SearchTask:
    fleet: Fleet
    strategy: Any  # scenarios.StrategySpec
    seeds: list[int]
    options: CapacityOptions


def run_search(task: SearchTask, emit: Callable[[Any], None] | None = None) -> Search:
    """The bracket of one (fleet, strategy) on the simulator (one worker task)."""
    fleet = task.fleet
    search = Search(fleet.fleet_id, task.strategy.label)

    def evaluate(load: float) -> list[float]:
        sc = at_load(fleet.scenario, fleet.knob, load)
        values = [attainment(sc, task.strategy, s) for s in task.seeds]
        if emit is not None:
            emit(("probe", fleet.fleet_id, task.strategy.label, load, values))
        return values

    upper = math.inf
    if fleet.knob == "concurrency":  # clients beyond the trace's sessions (or requests) idle
        from workload import build_trace

        sc = at_load(fleet.scenario, fleet.knob, fleet.start)
        trace = build_trace(asdict(sc.workload), asdict(sc.arrivals), seed=task.seeds[0],
                            num_requests=sc.num_requests, duration_s=sc.duration_s)
        upper = float(len(set(trace.conversation_id.tolist())) if trace.meta.get("sessions") == "closed"
                      else len(trace))
    return bracket_search(evaluate, fleet.start, task.options, integer=fleet.knob == "concurrency",
                          search=search, upper=upper)


class _SearchInWorker:
    """``run_search`` in the shape ``sim.workers.WorkerPool`` runs (picklable)."""

    def __call__(self, task: SearchTask, emit: Callable[[Any], None]) -> None:
        emit(("done", run_search(task, emit)))


def run_capacity(scenario, points, options: CapacityOptions, *, workers: int = 1,
                 on_probe: Callable[[str, str, float, list[float]], None] | None = None,
                 on_pool: Callable[[Any], None] | None = None) -> list[tuple[Fleet, Search]]:
    """Every (fleet, strategy) search of a scenario, in parallel worker processes."""
    options.validate()
    if not any(v is not None for v in asdict(scenario.slo).values()):
        raise ValueError("the capacity search needs an SLO: set [slo] ttft_ms, tpot_ms and/or "
                         "e2el_ms in the scenario (or --set slo.ttft_ms=2000)")
    fleet_list = fleets(scenario, points)
    tasks = [SearchTask(f, s, [int(x) for x in scenario.seeds], options)
             for f in fleet_list for s in scenario.router.strategies]
    by_key: dict[tuple[str, str], Search] = {}

    def on_item(item) -> None:
        kind = item[0]
        if kind == "probe" and on_probe is not None:
            on_probe(item[1], item[2], item[3], item[4])
        elif kind == "done":
            by_key[(item[1].fleet_id, item[1].strategy)] = item[1]

    if workers <= 1 or len(tasks) <= 1:
        for t in tasks:
            _SearchInWorker()(t, on_item)
    else:
        from sim.workers import WorkerPool

        lost: list[str] = []
        pool = WorkerPool(min(workers, len(tasks)), _SearchInWorker())
        if on_pool is not None:
            on_pool(pool)
        try:
            pool.run(tasks, on_item, lambda task, why: lost.append(
                f"{task.fleet.fleet_id}/{task.strategy.label}: {why}"))
        finally:
            if on_pool is not None:
                on_pool(None)
        if lost:
            raise RuntimeError("capacity search workers died: " + "; ".join(lost))
    fleet_of = {f.fleet_id: f for f in fleet_list}
    return [(fleet_of[t.fleet.fleet_id], by_key[(t.fleet.fleet_id, t.strategy.label)])
            for t in tasks if (t.fleet.fleet_id, t.strategy.label) in by_key]


def capacity_document(scenario, results: Sequence[tuple[Fleet, Search]],
                      options: CapacityOptions) -> dict[str, Any]:
    """``capacity.json``: options, fleets and every search with its probes."""
    fleets_seen: dict[str, Fleet] = {}
    for f, _ in results:
        fleets_seen.setdefault(f.fleet_id, f)
    return {
        "capacity_version": 1,
        "target_attainment": options.target,
        "rel_tol": options.rel_tol,
        "seeds": [int(s) for s in scenario.seeds],
        "slo": {k: v for k, v in asdict(scenario.slo).items() if v is not None},
        "fleets": [{"fleet_id": f.fleet_id, "label": f.label, "knob": f"arrivals.{f.knob}",
                    "unit": f.unit, "start": f.start} for f in fleets_seen.values()],
        "results": [s.to_json(options.target) for _, s in results],
    }


def capacity_command(run, scenario, points, options: CapacityOptions, *, workers: int = 0,
                     on_probe=None, on_pool=None) -> str:
    """Run every search, write ``capacity.json`` into ``run`` and return the table's text.

    ``workers`` 0: all cores.
    """
    import json
    import os

    from results.capacity import CAPACITY_FILE, format_capacity
    from results.jsonsafe import json_safe

    n = workers or (os.cpu_count() or 1)
    results = run_capacity(scenario, points, options, workers=n, on_probe=on_probe,
                           on_pool=on_pool)
    doc = capacity_document(scenario, results, options)
    path = run.path / CAPACITY_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(json_safe(doc), indent=2), encoding="utf-8")
    tmp.replace(path)
    return format_capacity(doc)
