"""Sweeps: every grid point x strategy x seed of a scenario, in parallel, resumable.

The unit of work and of resumption is one (grid point, strategy, seed): it is done
exactly when its record file exists in the run directory (written atomically).
Work is handed out per (grid point, seed) so a worker builds that trace once and
runs every strategy on the same requests and arrivals (common random numbers make
strategy comparisons sharper). A unit that raises is recorded in ``failures/`` and
the sweep goes on; Ctrl-C or a killed worker leaves finished units in place for
``--resume``. Workers are ``sim.workers.WorkerPool`` processes: a stop ends them
within seconds, and they die with the parent. A records file that does not read
back is set aside and its unit redone.
"""
from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import routing
from results.metrics import UnitMetrics, file_metrics
from results.records import RecordSchemaError, RunLabels
from results.rundir import RunDir, Unit
from results.summary import RunSummary, build_summary
from scenarios.runs import base_manifest, new_experiment_id, scenario_digest  # noqa: F401
from sim.cluster import simulate
from sim.fleet import cluster_config
from sim.workers import WorkerPool

@dataclass
class Task:
    """One (grid point, seed) and the strategies still to run on it."""

    point: Any  # scenarios.GridPoint
    seed: int
    strategies: list[Any]  # scenarios.StrategySpec


@dataclass
class UnitOutcome:
    unit: Unit
    metrics: dict[str, Any] | None = None
    error: str | None = None
    wall_s: float = 0.0
    num_requests: int = 0
    sim_time_s: float = 0.0


@dataclass
class SweepResult:
    run: RunDir
    summary: RunSummary | None
    outcomes: list[UnitOutcome] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    interrupted: bool = False
    skipped: int = 0
    #: units whose records file did not read back: set aside, redone (unit key -> message)
    set_aside: dict[str, str] = field(default_factory=dict)


# --- building a run ---------------------------------------------------------------------
def build_manifest(scenario, points, experiment_id: str, digest: str) -> dict[str, Any]:
    """The run's manifest: the scenario part (``scenarios.runs``) and the simulator's."""
    manifest = base_manifest(scenario, points, experiment_id, digest, "sim")
    manifest["sim"] = {"mode": scenario.router.mode}
    return manifest


def plan_tasks(run: RunDir, points, seeds: Sequence[int], strategies, *,
               set_aside: dict[str, str] | None = None) -> tuple[list[Task], int]:
    """Tasks for the units not yet done, and how many units were already done.

    A unit whose file exists but does not read back is not done: with ``set_aside`` (a
    dict to fill) its file is moved aside (``RunDir.set_aside``) and the unit planned
    again; without, it is only planned again.
    """
    tasks, done = [], 0
    for p in points:
        for seed in seeds:
            todo = []
            for s in strategies:
                unit = Unit(p.point_id, s.label, int(seed))
                if run.is_done(unit):
                    why = run.unreadable(unit)
                    if why is None:
                        continue
                    if set_aside is not None:
                        moved = run.set_aside(unit, why)
                        set_aside[unit.key] = f"{why}; moved to {moved}"
                todo.append(s)
            done += len(strategies) - len(todo)
            if todo:
                tasks.append(Task(p, int(seed), todo))
    return tasks, done


# --- running one task (in a worker process) --------------------------------------------------
_TRACES: dict[str, Any] = {}


def _trace_for(point, seed: int):
    """The trace of a (point, seed), built once per worker (two kept)."""
    from workload import build_trace

    sc = point.scenario
    key = json.dumps([asdict(sc.workload), asdict(sc.arrivals), seed, sc.num_requests,
                      sc.duration_s], sort_keys=True, default=str)
    trace = _TRACES.get(key)
    if trace is None:
        trace = build_trace(asdict(sc.workload), asdict(sc.arrivals), seed=seed,
                            num_requests=sc.num_requests, duration_s=sc.duration_s)
        if len(_TRACES) >= 2:
            _TRACES.pop(next(iter(_TRACES)))
        _TRACES[key] = trace
    return trace


def run_task(run_path: str, experiment_id: str, task: Task,
             emit: Callable[[UnitOutcome], None] | None = None) -> list[UnitOutcome]:
    """Simulate every strategy of ``task``, writing each unit's records as it finishes.

    ``emit`` receives each unit's outcome as soon as it is known (a worker sends it
    to the parent at once, so a stop never loses a finished unit's metrics).
    """
    run = RunDir(run_path)
    sc = task.point.scenario
    outcomes: list[UnitOutcome] = []

    def done(outcome: UnitOutcome) -> None:
        outcomes.append(outcome)
        if emit is not None:
            emit(outcome)

    try:
        trace = _trace_for(task.point, task.seed)
        config = cluster_config(sc)
    except Exception:  # noqa: BLE001 - reported per unit, the sweep goes on
        err = traceback.format_exc()
        for s in task.strategies:
            unit = Unit(task.point.point_id, s.label, task.seed)
            run.record_failure(unit, err)
            done(UnitOutcome(unit, error=err))
        return outcomes
    names = [b.name for b in config.backends]
    slo = {k: v for k, v in asdict(sc.slo).items() if v is not None}
    for s in task.strategies:
        unit = Unit(task.point.point_id, s.label, task.seed)
        t0 = time.perf_counter()
        try:
            strategy = routing.build(s.name, seed=task.seed, **s.params)
            labels = RunLabels(experiment_id, unit.point_id, unit.strategy, unit.seed)
            # Records stream to disk as requests end: memory does not grow with the run.
            with run.unit_writer(unit) as writer:
                result = simulate(trace, strategy, config, labels=labels, seed=task.seed,
                                  sink=writer.write)
                writer.counters = result.counters()
            metrics = file_metrics(run.unit_path(unit), slo, backend_names=names)
            done(UnitOutcome(unit, metrics.to_dict(), wall_s=time.perf_counter() - t0,
                             num_requests=result.num_records, sim_time_s=result.end_time))
        except Exception:  # noqa: BLE001
            err = traceback.format_exc()
            run.record_failure(unit, err)
            done(UnitOutcome(unit, error=err, wall_s=time.perf_counter() - t0))
    return outcomes


class _StreamTask:
    """``run_task`` in the shape ``WorkerPool`` runs (picklable for spawned workers)."""

    def __init__(self, run_path: str, experiment_id: str) -> None:
        self.run_path = run_path
        self.experiment_id = experiment_id

    def __call__(self, task: Task, emit: Callable[[UnitOutcome], None]) -> None:
        run_task(self.run_path, self.experiment_id, task, emit)


# --- the sweep ----------------------------------------------------------------------------------
def _metrics_from_disk(run: RunDir, unit: Unit, slo: dict, names: list[str]) -> UnitMetrics:
    return file_metrics(run.unit_path(unit), slo, backend_names=names)


def run_sweep(
    run: RunDir,
    points,
    seeds: Sequence[int],
    strategies,
    *,
    workers: int | None = None,
    ray_address: str | None = None,
    on_outcome: Callable[[UnitOutcome], None] | None = None,
    objective: str | None = None,
    on_pool: Callable[[WorkerPool | None], None] | None = None,
) -> SweepResult:
    """Run the units not yet done; summarise every unit of the run.

    ``KeyboardInterrupt`` (the first Ctrl-C or SIGTERM) stops the workers at once;
    units already written are kept and summarised, and the result says
    ``interrupted``. ``on_pool`` is told the worker pool while it runs (so a second
    signal can kill its workers without waiting for anything).
    """
    manifest = run.manifest
    set_aside: dict[str, str] = {}
    tasks, skipped = plan_tasks(run, points, seeds, strategies, set_aside=set_aside)
    experiment_id = manifest["experiment_id"]
    outcomes: list[UnitOutcome] = []
    interrupted = False

    def collect(batch: Iterable[UnitOutcome]) -> None:
        for o in batch:
            outcomes.append(o)
            if on_outcome is not None:
                on_outcome(o)

    def lost(task: Task, why: str) -> None:
        """A worker died (or raised outside a unit) during ``task``: its unfinished units fail."""
        reported = {o.unit for o in outcomes}
        for s in task.strategies:
            unit = Unit(task.point.point_id, s.label, task.seed)
            if unit not in reported and not run.is_done(unit):
                run.record_failure(unit, f"{why}\n")
                collect([UnitOutcome(unit, error=why)])

    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    try:
        if ray_address is not None:
            _run_on_ray(ray_address, str(run.path), experiment_id, tasks, collect)
        elif workers <= 1 or len(tasks) <= 1:
            for task in tasks:
                run_task(str(run.path), experiment_id, task, lambda o: collect([o]))
        else:
            pool = WorkerPool(min(workers, len(tasks)), _StreamTask(str(run.path), experiment_id))
            if on_pool is not None:
                on_pool(pool)
            try:
                pool.run(tasks, lambda o: collect([o]), lost)
            finally:
                if on_pool is not None:
                    on_pool(None)
    except KeyboardInterrupt:
        interrupted = True
    summary = summarize(run, points, objective=objective, fresh=outcomes)
    return SweepResult(run, summary, outcomes, run.failures(), interrupted, skipped, set_aside)


def _run_on_ray(address: str, run_path: str, experiment_id: str, tasks: list[Task], collect) -> None:
    """Distribute tasks over a Ray cluster (``auto``, an address, or ``local``)."""
    try:
        import ray
    except ImportError:
        raise SystemExit("--ray needs Ray: pip install 'vllm-routing-lab[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        if address == "local":
            ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
        else:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
    remote = ray.remote(run_task)
    try:
        refs = [remote.remote(run_path, experiment_id, t) for t in tasks]
        while refs:
            ready, refs = ray.wait(refs, num_returns=1)
            for r in ready:
                collect(ray.get(r))
    finally:
        if started_here:
            ray.shutdown()


def summarize(run: RunDir, points=None, *, objective: str | None = None,
              fresh: Sequence[UnitOutcome] = ()) -> RunSummary | None:
    """The run's summary over every finished unit; writes ``summary.json``."""
    manifest = run.manifest
    slo = manifest.get("slo") or {}
    names = {p["point_id"]: [b["name"] for b in p["backends"]] for p in manifest["points"]}
    known = {o.unit: o.metrics for o in fresh if o.metrics is not None}
    units = {run.unit_path(u): u for u in (
        Unit(p["point_id"], s["label"], int(seed))
        for p in manifest["points"] for s in manifest["strategies"] for seed in manifest["seeds"])}
    results = []
    for path in run.record_files():
        unit = units.get(path)
        if unit is None:
            continue  # a file this manifest does not list (left by hand): ignored
        m = known.get(unit)
        if m is not None:
            metrics = UnitMetrics.from_dict(m)
        else:
            try:
                metrics = _metrics_from_disk(run, unit, slo, names.get(unit.point_id, []))
            except (RecordSchemaError, OSError, ValueError) as exc:
                # Its footer read back but its data did not: set aside, redone by --resume.
                run.set_aside(unit, f"{type(exc).__name__}: {exc}")
                continue
        results.append((unit, metrics))
    if not results:
        return None
    summary = build_summary(manifest, results, objective)
    run.write_summary(summary.to_json())
    return summary
