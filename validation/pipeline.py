"""``python -m validation SIM_RUN``: do live backends rank the strategies as the simulator did?

1. **Rebuild** the sim run's scenario: its ``scenario.toml`` with the manifest's
   seeds and mode (plus any ``--set``), checked against the manifest's digest.
2. **Choose** grid points: the K whose best strategy scored best on the run's
   objective (goodput when the run has SLOs), or the ones named by ``--points``.
3. **Scale** each point to the time budget: the longest prefix of its traces
   (arrivals up to a cut time, the same for every seed) whose simulated units,
   every strategy and seed, end within the budget's share per unit. Those
   simulations of the cut traces are the simulated side (``DIR/resimulated``, a
   sim run), so both sides replay exactly the same requests.
4. **Replay** the same cut traces live, every strategy and seed, into ``DIR`` (a
   live run): against emulators with the run's profiles (``--emulate``), given
   servers (``--backends``), or real vLLM-CPU instances started here through
   ``calibrate.serve`` (``--spawn-vllm``, ``validation.vllm``) and always stopped after.
5. **Judge** (``validation.judge``): relative errors of the metrics,
   Kendall tau-b and top-1 agreement of the rankings per point, a verdict; written
   to ``DIR/validation.json`` and as an HTML section in both runs' ``validation/``.
"""
from __future__ import annotations

import json
import math
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

import routing
from live.loadgen import LoadOptions
from live.run import LiveSettings, build_manifest, check_fleet_sizes, run_scenario
from results.jsonsafe import dumps
from results.records import RunLabels
from results.rundir import NotARunDirectory, RunDir, Unit
from results.stats import direction
from results.summary import point_label, summarize_run
from scenarios import ScenarioError
from scenarios.grid import expand_grid
from scenarios.loader import parse_scenario
from scenarios.overrides import parse_assignment
from scenarios.runs import new_experiment_id, scenario_digest
from sim.cluster import simulate
from sim.fleet import FleetError, cluster_config
from sim.latency import ProfileError, load_profile
from sim.sweep import build_manifest as sim_manifest
from validation.judge import judge
from validation.report import format_text, render_html
from validation.vllm import (
    VLLM_CPU_BLOCK_SIZE, ServeArgsError, ServeError, VllmInstance, core_for, shape_of, spawn_vllm,
)
from workload import build_trace
from workload.trace import Trace

VALIDATION_VERSION = 1
#: Seconds of each unit's share of the budget kept for resetting backends and connecting.
UNIT_OVERHEAD_S = 2.0
#: A live unit is stopped at max(FACTOR x its simulated length, that + SLACK): a safety
#: bound for backends far slower than simulated (what is still running is "unfinished").
LIVE_BOUND_FACTOR = 1.5
LIVE_BOUND_SLACK_S = 20.0
#: The simulated side caches no served reply under a name a later prompt has: the live
#: load generator replays the trace's tokens (the dataset's replies), not what the
#: backend generated, so a live follow-up turn never hits its predecessor's reply
#: blocks. Simulating them as hits (the simulator's default, a real chat client's
#: behaviour) over-predicted prefix hits on multi-turn traces.
REPLIES_IN_PROMPTS = False
#: Bisection steps when searching the cut time (resolution: budget / 2**steps).
SEARCH_STEPS = 10
#: Fewer requests per unit than this gets a warning: rankings on so few are noisy.
FEW_REQUESTS = 30
#: Objectives replaced when the workload is cut. Goodput divides the good requests by
#: the unit's duration, which on a short trace is mostly the last request's tail; every
#: strategy serves the same requests, so SLO attainment ranks as goodput does over a long
#: run, without that edge effect.
SCALED_OBJECTIVE = {"request_goodput": "slo_attainment"}


class ValidationError(Exception):
    """Bad input: a message naming what is wrong and what to do."""


@dataclass
class Target:
    """Where the live side runs: exactly one of the three."""

    backends: list[str] | None = None
    emulate: int = 0
    spawn_vllm: int = 0
    serve_args: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        return "backends" if self.backends else "emulate" if self.emulate else "spawn-vllm"

    def size(self) -> int:
        return len(self.backends) if self.backends else self.emulate or self.spawn_vllm

    def describe(self) -> str:
        if self.backends:
            return "given backends " + ", ".join(self.backends)
        if self.emulate:
            return f"{self.emulate} emulators (stand-ins running the simulator's engine model)"
        return f"{self.spawn_vllm} real vLLM-CPU instances (calibrate.serve)"

    def check(self) -> None:
        given = [bool(self.backends), self.emulate > 0, self.spawn_vllm > 0]
        if sum(given) != 1:
            raise ValidationError("give exactly one of --backends URL,..., --emulate N or --spawn-vllm N "
                                  "(N >= 1)")


@dataclass
class ValidateOptions:
    """Everything a validation is told (the command line's options)."""

    sim_run: Path
    target: Target
    top: int = 1
    points: Sequence[str] | None = None
    budget_s: float = 600.0
    seeds: Sequence[int] | None = None
    overrides: Sequence[str] = ()
    objective: str | None = None
    out: Path | None = None
    runs_dir: Path = Path("runs")
    gateway: bool = False
    load: LoadOptions = field(default_factory=LoadOptions)
    report: bool = True
    progress: bool = True
    command: str = ""

    def check(self) -> None:
        self.target.check()
        if self.top < 1:
            raise ValidationError(f"--top must be >= 1, got {self.top}")
        if not self.budget_s > 0:
            raise ValidationError(f"--budget-s must be > 0, got {self.budget_s}")


# --- 1. the sim run --------------------------------------------------------------------------
@dataclass
class SimRun:
    run: RunDir
    manifest: dict[str, Any]
    scenario: Any
    points: list[Any]
    checks: list[dict[str, str]]


def load_sim_run(path: Path, overrides: Sequence[str] = ()) -> SimRun:
    """The sim run and its scenario rebuilt from ``scenario.toml`` + manifest (+ ``--set``)."""
    try:
        run = RunDir.open(path)
    except NotARunDirectory as exc:
        raise ValidationError(str(exc)) from None
    manifest = run.manifest
    if manifest.get("mode") != "sim":
        raise ValidationError(f"{path} is a {manifest.get('mode')!r} run; validation takes a simulator "
                              "run (python -m sim SCENARIO)")
    text_path = run.path / "scenario.toml"
    if not text_path.is_file():
        raise ValidationError(f"{path} has no scenario.toml to rebuild the scenario from")
    given: dict[str, Any] = {"seeds": list(manifest.get("seeds") or [0])}
    mode = (manifest.get("sim") or {}).get("mode")
    if mode:
        given["router.mode"] = mode
    try:
        for item in overrides:
            key, value = parse_assignment(item)
            given[key] = value
        source = manifest.get("scenario_path")
        scenario = parse_scenario(text_path.read_text(encoding="utf-8"), source=str(text_path),
                                  overrides=given, source_path=Path(source) if source else None)
    except (ScenarioError, ValueError) as exc:
        raise ValidationError(str(exc)) from None
    checks: list[dict[str, str]] = []
    if scenario_digest(scenario) != manifest.get("scenario_sha256"):
        problem = (f"{path}: its scenario.toml with the manifest's seeds and mode does not give the "
                   "scenario the run simulated (it was run with --set options)")
        if not overrides:
            raise ValidationError(problem + "; repeat them here with --set KEY=VALUE")
        checks.append(warning(problem + "; the --set given here do not reproduce it either, so the "
                              "points are chosen from a run of a different scenario"))
    return SimRun(run, manifest, scenario, expand_grid(scenario), checks)


def warning(message: str) -> dict[str, str]:
    return {"level": "warning", "message": message}


# --- 2. choosing points ----------------------------------------------------------------------
def sim_ranking(run: RunDir, objective: str | None, progress: bool):
    """The run's ranking per point and its objective (``summary.json`` when it fits)."""
    import pandas as pd

    path = run.path / "summary.json"
    if path.is_file():
        doc = json.loads(path.read_text())
        if doc.get("ranking") and (objective is None or doc.get("objective") == objective):
            return pd.DataFrame(doc["ranking"]), str(doc["objective"])
    try:
        summary = summarize_run(run.path, objective=objective, progress=progress, write=False)
    except (ValueError, FileNotFoundError) as exc:
        raise ValidationError(f"cannot rank the strategies of {run.path}: {exc}") from None
    return summary.ranking, summary.objective


def choose_points(points: Sequence[Any], ranking, objective: str, top: int,
                  wanted: Sequence[str] | None = None) -> list[tuple[Any, dict[str, Any]]]:
    """The points to validate with why: ``wanted`` ids, else the ``top`` best by the objective.

    A point's score is its best strategy's mean objective; points are taken best
    score first (ties in the run's point order).
    """
    best = {}
    for r in ranking[ranking["rank"] == 1].itertuples(index=False):
        best[str(r.point_id)] = {"best_strategy": str(r.strategy), "objective": objective,
                                 "value": float(r.mean)}
    by_id = {p.point_id: p for p in points}
    if wanted:
        unknown = [w for w in wanted if w not in by_id]
        if unknown:
            raise ValidationError(f"--points: unknown point id(s) {', '.join(unknown)}; the run's "
                                  f"points are {', '.join(by_id)}")
        return [(by_id[w], best.get(w, {})) for w in wanted]
    scored = [p for p in points if p.point_id in best and math.isfinite(best[p.point_id]["value"])]
    if not scored:
        raise ValidationError(f"no grid point of the run has a finite {objective}; name points with "
                              "--points or rank by another --objective")
    sign = -1.0 if direction(objective) == "higher" else 1.0
    order = sorted(range(len(scored)), key=lambda i: (sign * best[scored[i].point_id]["value"], i))
    return [(scored[i], best[scored[i].point_id]) for i in order[:top]]


# --- checks of what serves the live side -----------------------------------------------------
def check_target(points: Sequence[Any], target: Target) -> list[dict[str, str]]:
    """Errors (raised) and warnings about running these points on this target."""
    checks: list[dict[str, str]] = []
    seen: set[str] = set()
    for point in points:
        sc = point.scenario
        n = len(sc.backends())
        if target.size() != n:
            flag = {"backends": "--backends gives", "emulate": "--emulate is",
                    "spawn-vllm": "--spawn-vllm is"}[target.kind]
            raise ValidationError(f"grid point {point.point_id} has {n} backends but {flag} "
                                  f"{target.size()}; give one per backend of the simulated fleet")
        for name, group in sc.backends():
            try:
                prof = load_profile(group.profile)
            except ProfileError as exc:
                raise ValidationError(f"backend {name}: {exc}") from None
            if target.spawn_vllm:
                if shape_of(prof.served_model) is None:
                    raise ValidationError(
                        f"backend {name} of point {point.point_id} is simulated with profile "
                        f"{group.profile!r} ({prof.served_model} on {prof.hardware}), which --spawn-vllm "
                        "cannot serve: it starts the random-weight llama shapes on CPU. Simulate with a "
                        "CPU profile (cpu-tiny, cpu-small) or use --backends")
                if group.block_size != VLLM_CPU_BLOCK_SIZE:
                    raise ValidationError(
                        f"point {point.point_id}: cluster.groups.{group.name}.block_size is "
                        f"{group.block_size} but vLLM-CPU uses {VLLM_CPU_BLOCK_SIZE}-token KV blocks; "
                        f"simulate with workload.block_size = {VLLM_CPU_BLOCK_SIZE} and the groups' "
                        f"block_size = {VLLM_CPU_BLOCK_SIZE}")
                if group.num_kv_blocks and group.num_kv_blocks != prof.engine.num_kv_blocks:
                    checks.append(warning(
                        f"cluster.groups.{group.name}.num_kv_blocks = {group.num_kv_blocks}, but vLLM-CPU "
                        f"is started with the profile's KV cache ({prof.engine.num_kv_blocks} blocks)"))
            profile_key = group.profile if isinstance(group.profile, str) else json.dumps(group.profile, sort_keys=True)
            if profile_key in seen:
                continue
            seen.add(profile_key)
            if target.emulate:
                continue  # emulators run the simulator's own engine with this profile
            kind = (prof.source or {}).get("kind")
            if prof.provisional or kind != "fitted":
                checks.append(warning(
                    f"profile {group.profile} is not fitted to a real server ({'provisional, ' if prof.provisional else ''}"
                    f"source: {kind or 'unknown'}): errors measure the profile as much as the simulator"))
    if target.spawn_vllm:
        for point in points:  # a bad --serve-args fails here, before anything runs
            try:
                for inst in vllm_instances(point, target.serve_args):
                    inst.spec()
            except ServeArgsError as exc:
                raise ValidationError(str(exc)) from None
    if target.backends:
        checks += check_served_models(points[0], target.backends)
    return checks


def check_served_models(point, urls: Sequence[str]) -> list[dict[str, str]]:
    """Warn where a given server does not serve the model its profile was measured on."""
    out = []
    for url, (name, group) in zip(urls, point.scenario.backends()):
        prof = load_profile(group.profile)
        try:
            with urllib.request.urlopen(url.rstrip("/") + "/v1/models", timeout=5.0) as r:
                served = [m.get("id") for m in json.loads(r.read()).get("data", [])]
        except (urllib.error.URLError, OSError, ValueError, AttributeError) as exc:
            out.append(warning(f"cannot list the models of {url} ({exc}); is it up?"))
            continue
        if not {prof.served_model, prof.name} & set(served):
            out.append(warning(f"{url} serves {', '.join(map(str, served)) or 'no model'} but backend "
                               f"{name} is simulated with profile {prof.name} of {prof.served_model}"))
    return out


# --- 3. scaling to the budget, and the simulated side ----------------------------------------
@dataclass
class PointPlan:
    """One point's scaled workload and its simulation (the simulated side of the comparison)."""

    point: Any
    full_sizes: dict[int, int]
    cut_s: float
    traces: dict[int, Trace]
    records: dict[tuple[str, int], list]
    predicted_s: float

    @property
    def live_bound_s(self) -> float:
        return max(LIVE_BOUND_FACTOR * self.predicted_s, self.predicted_s + LIVE_BOUND_SLACK_S)

    def describe(self) -> dict[str, Any]:
        return {"point_id": self.point.point_id, "label": point_label(self.point.describe()),
                "axes": dict(self.point.axes), "seeds": sorted(self.traces),
                "requests": {str(s): len(t) for s, t in self.traces.items()},
                "full_requests": {str(s): n for s, n in self.full_sizes.items()},
                "cut_s": self.cut_s, "predicted_unit_s": self.predicted_s,
                "live_bound_s": self.live_bound_s}


def _cut(trace: Trace, cut_s: float) -> Trace:
    keep = int(np.searchsorted(trace.arrival_s, cut_s, side="right"))
    return trace if keep >= len(trace) else trace.take(np.arange(keep))


def plan_point(point, seeds: Sequence[int], strategies, unit_budget_s: float, experiment_id: str,
               on_step: Callable[[], None] | None = None) -> PointPlan:
    """Cut the point's traces so every simulated unit ends within ``unit_budget_s``.

    The cut time is found by bisection (simulated length grows with it); the
    simulations of the chosen cut are kept: they are the simulated side.
    """
    sc = point.scenario
    try:
        config = cluster_config(sc)
    except FleetError as exc:
        raise ValidationError(f"point {point.point_id}: {exc}") from None
    full = {int(s): build_trace(asdict(sc.workload), asdict(sc.arrivals), seed=int(s),
                                num_requests=sc.num_requests, duration_s=sc.duration_s) for s in seeds}

    def attempt(cut_s: float) -> PointPlan | None:
        traces = {s: _cut(t, cut_s) for s, t in full.items()}
        if any(len(t) == 0 for t in traces.values()):
            return None
        records, longest = {}, 0.0
        for s, trace in traces.items():
            for strat in strategies:
                labels = RunLabels(experiment_id, point.point_id, strat.label, s)
                result = simulate(trace, routing.build(strat.name, seed=s, **strat.params), config,
                                  labels=labels, seed=s, replies_in_prompts=REPLIES_IN_PROMPTS)
                records[(strat.label, s)] = result.records
                longest = max(longest, float(np.nanmax([r.finish_s for r in result.records])))
        if on_step:
            on_step()
        return PointPlan(point, {s: len(t) for s, t in full.items()}, cut_s, traces, records, longest)

    # A unit lasts at least until its last arrival, so no cut beyond the budget can fit.
    last = max(float(t.arrival_s[-1]) for t in full.values())
    lo, hi, best = 0.0, min(last, unit_budget_s), None
    whole = attempt(hi)  # every request when the traces end within the budget
    if whole is not None and whole.predicted_s <= unit_budget_s:
        return whole
    for _ in range(SEARCH_STEPS):
        mid = (lo + hi) / 2
        p = attempt(mid)
        if p is None or p.predicted_s <= unit_budget_s:
            lo, best = mid, p or best
        else:
            hi = mid
    if best is None:
        raise ValidationError(
            f"point {point.point_id}: even its first requests take longer than the budget allows per "
            f"unit ({unit_budget_s:.0f} s); raise --budget-s or validate fewer points, seeds or strategies")
    return best


# --- 4. the live side ------------------------------------------------------------------------
#: Short requests sent to each real server before the first unit, not recorded: the first
#: requests after vLLM starts pay one-off costs (allocations, first kernels, tokenizer).
WARM_UP_REQUESTS = 3


def warm_up(urls: Sequence[str], load: LoadOptions, say: Callable[[str], None]) -> None:
    """A few requests per real server before measuring (units reset the prefix cache anyway)."""
    body: dict[str, Any] = {"prompt": list(range(1, 129)), "max_tokens": 16, "ignore_eos": True}
    if load.model:
        body["model"] = load.model
    headers = {"Content-Type": "application/json"}
    if load.api_key:
        headers["Authorization"] = f"Bearer {load.api_key}"
    for url in urls:
        try:
            for _ in range(WARM_UP_REQUESTS):
                req = urllib.request.Request(url + "/v1/completions", data=json.dumps(body).encode(),
                                             headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=120.0) as r:
                    r.read()
        except (urllib.error.URLError, OSError) as exc:
            say(f"warning: warming up {url} failed ({exc}); its first unit may be slower")


def vllm_instances(point, serve_args: Sequence[str]) -> tuple[VllmInstance, ...]:
    """One vLLM server per backend of the point, with its profile's shape and limits."""
    out = []
    for i, (_, group) in enumerate(point.scenario.backends()):
        prof = load_profile(group.profile)
        out.append(VllmInstance(
            shape=str(shape_of(prof.served_model)), cores=core_for(i),
            max_num_seqs=group.max_num_seqs or prof.engine.max_num_seqs,
            max_num_batched_tokens=group.max_num_batched_tokens or prof.engine.max_num_batched_tokens,
            serve_args=tuple(serve_args)))
    return tuple(out)


def run_live(run: RunDir, scenario, plans: Sequence[PointPlan], opts: ValidateOptions,
             say: Callable[[str], None]) -> list:
    """Replay every plan's cut traces live, each strategy and seed; return the unit reports."""
    by_id = {p.point.point_id: p for p in plans}

    def trace_for(point, seed: int):
        plan = by_id[point.point_id]
        return plan.traces[int(seed)], plan.live_bound_s

    def on_unit(rep) -> None:
        if rep.error:
            say(f"FAILED {rep.unit.key}: {rep.error}")
        else:
            say(f"{rep.unit.key}: {rep.ok}/{rep.requests} ok in {rep.wall_s:.1f} s")

    target = opts.target
    settings = LiveSettings(backends=target.backends, emulate=target.emulate, gateway=opts.gateway,
                            load=opts.load)
    if target.backends:
        warm_up(target.backends, opts.load, say)
    if not target.spawn_vllm:
        return run_scenario(run, scenario, [p.point for p in plans], settings, on_unit=on_unit,
                            trace_for=trace_for)
    fleets: dict[tuple, list] = {}
    for p in plans:
        fleets.setdefault(vllm_instances(p.point, target.serve_args), []).append(p.point)
    reports = []
    for instances, points in fleets.items():
        shapes = ", ".join(f"{i.shape} on core {i.cores}" for i in instances)
        say(f"starting {len(instances)} vLLM-CPU instance(s): {shapes} (about 1-2 minutes)...")
        started = time.perf_counter()
        try:
            with spawn_vllm(instances) as urls:
                say(f"vLLM ready after {time.perf_counter() - started:.0f} s: {', '.join(urls)}")
                warm_up(urls, opts.load, say)
                run.update_manifest(live={**run.manifest["live"], "backends": urls})
                settings = replace(settings, backends=urls, emulate=0)
                reports += run_scenario(run, scenario, points, settings, on_unit=on_unit,
                                        trace_for=trace_for)
        except ServeError as exc:  # raised only while starting: nothing ran on these servers
            raise ValidationError(f"vLLM did not start: {exc}") from None
        say("vLLM stopped")
    return reports


# --- the whole validation ------------------------------------------------------------------
def validate(opts: ValidateOptions, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run a validation end to end; return the validation document (also written to disk)."""
    from tqdm import tqdm

    opts.check()
    t0 = time.perf_counter()
    sim = load_sim_run(Path(opts.sim_run), opts.overrides)
    ranking, objective = sim_ranking(sim.run, opts.objective, opts.progress)
    chosen = choose_points(sim.points, ranking, objective, opts.top, opts.points)
    points = [p for p, _ in chosen]
    checks = sim.checks + check_target(points, opts.target)
    for c in checks:
        say(f"{c['level']}: {c['message']}")
    seeds = [int(s) for s in (opts.seeds or sim.scenario.seeds)]
    scenario = replace(sim.scenario, seeds=seeds)
    strategies = list(scenario.router.strategies)
    units = len(points) * len(strategies) * len(seeds)
    unit_budget = opts.budget_s / units - UNIT_OVERHEAD_S
    if unit_budget <= 0:
        raise ValidationError(f"--budget-s {opts.budget_s:g} leaves nothing per unit ({units} units of "
                              f"{UNIT_OVERHEAD_S:g} s overhead each); raise it or validate fewer points")

    digest = scenario_digest(scenario)
    live_id = new_experiment_id(scenario, digest, tag="validate")
    out = Path(opts.out) if opts.out else Path(opts.runs_dir) / live_id
    if (out / "manifest.json").exists():
        raise ValidationError(f"{out} already holds a run; choose another --out")
    settings = LiveSettings(backends=opts.target.backends, emulate=opts.target.emulate,
                            gateway=opts.gateway, load=opts.load)
    if not opts.target.spawn_vllm:
        try:
            check_fleet_sizes(points, settings)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None

    say(f"validating {len(points)} point(s) of {sim.run.path} x {len(strategies)} strategies x "
        f"{len(seeds)} seed(s) = {units} live units on {opts.target.describe()}")
    for p, why in chosen:
        reason = (f"best {why['objective']} {why['value']:.3g} ({why['best_strategy']})" if why
                  else "named by --points")
        say(f"  {point_label(p.describe())}: {reason}")
    say(f"budget {opts.budget_s:.0f} s of live replay: about {unit_budget:.0f} s per unit; scaling each "
        "point's workload to fit, simulated again at that size")
    steps = tqdm(total=None, desc="scaling", unit="try", disable=not opts.progress, leave=False)
    try:
        plans = [plan_point(p, seeds, strategies, unit_budget, f"{live_id}-sim", steps.update)
                 for p in points]
    finally:
        steps.close()
    for plan in plans:
        d = plan.describe()
        n = sum(d["requests"].values()) // len(seeds)
        full = sum(d["full_requests"].values()) // len(seeds)
        scaled = "" if n == full else f" (scaled from {full}: arrivals in the first {plan.cut_s:.1f} s)"
        say(f"  {d['label']}: {n} requests per unit{scaled}; simulated units last up to "
            f"{plan.predicted_s:.0f} s (live bound {plan.live_bound_s:.0f} s)")
        if n < FEW_REQUESTS:
            checks.append(warning(f"point {d['label']}: only {n} requests per unit fit the budget; "
                                  "rankings on so few requests are noisy (raise --budget-s)"))
            say(f"warning: {checks[-1]['message']}")
    scaled = any(len(t) < n for plan in plans for t, n in zip(plan.traces.values(),
                                                             plan.full_sizes.values()))
    judged = SCALED_OBJECTIVE.get(objective, objective) if scaled else objective
    if judged != objective:
        say(f"strategies are ranked by {judged} instead of {objective}: on a cut workload "
            f"{objective} mostly measures the last request's tail")
    t_sim = time.perf_counter() - t0

    resim = write_resimulated(out / "resimulated", scenario, plans, f"{live_id}-sim", digest, sim)
    manifest = build_manifest(scenario, points, live_id, digest, settings)
    manifest["live"]["backends"] = opts.target.backends or opts.target.describe()
    manifest["validation"] = scaled_section(sim, plans, opts)
    live_run = RunDir.create(out, manifest, scenario.source_text or None)
    t1 = time.perf_counter()
    load_before = os.getloadavg()
    reports = run_live(live_run, scenario, plans, opts, say)
    t_live = time.perf_counter() - t1
    machine = {"cpu_count": os.cpu_count(), "loadavg_before_live": list(load_before),
               "loadavg_after_live": list(os.getloadavg())}

    failed = [r for r in reports if r.error]
    if not live_run.record_files():
        raise ValidationError(f"no live unit finished ({len(failed)} failed); errors in {out / 'failures'}")
    sim_summary = summarize_run(resim.path, objective=judged, progress=False)
    live_summary = summarize_run(live_run.path, objective=judged, progress=False)
    doc = {
        "validation_version": VALIDATION_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": opts.command,
        "sim_run": str(sim.run.path), "sim_experiment_id": sim.manifest.get("experiment_id"),
        "live_run": str(live_run.path), "live_experiment_id": live_id,
        "resimulated_run": str(resim.path),
        "target": {"kind": opts.target.kind, "description": opts.target.describe(),
                   "backends": live_run.manifest["live"]["backends"], "gateway": opts.gateway},
        "objective": judged, "run_objective": objective, "budget_s": opts.budget_s, "per_unit_budget_s": unit_budget,
        "seeds": seeds, "strategies": [s.label for s in strategies],
        "points": [{**plan.describe(), "chosen_because": why} for plan, (_, why) in zip(plans, chosen)],
        "checks": checks,
        "failed_units": [{"unit": r.unit.key, "error": r.error} for r in failed],
        "wall_s": {"scaling_and_simulation": t_sim, "live": t_live, "total": time.perf_counter() - t0},
        "machine": machine,
        **judge(sim_summary, live_summary, judged),
    }
    write_outputs(doc, sim.run, live_run, opts, say)
    return doc


def write_resimulated(path: Path, scenario, plans: Sequence[PointPlan], experiment_id: str,
                      digest: str, sim: SimRun) -> RunDir:
    """The simulated side as a sim run directory (``python -m results`` reads it)."""
    manifest = sim_manifest(scenario, [p.point for p in plans], experiment_id, digest)
    manifest["validation"] = {"scaled_from": str(sim.run.path),
                              "points": {p.point.point_id: p.describe() for p in plans}}
    run = RunDir.create(path, manifest, scenario.source_text or None)
    for plan in plans:
        for (label, seed), records in plan.records.items():
            run.write_unit(Unit(plan.point.point_id, label, seed), records)
    return run


def scaled_section(sim: SimRun, plans: Sequence[PointPlan], opts: ValidateOptions) -> dict[str, Any]:
    return {"sim_run": str(sim.run.path), "sim_experiment_id": sim.manifest.get("experiment_id"),
            "budget_s": opts.budget_s, "points": {p.point.point_id: p.describe() for p in plans},
            "note": "each unit replays the first requests of its trace (arrivals up to cut_s), "
                    "re-simulated at that size in resimulated/"}


def write_outputs(doc: dict[str, Any], sim_run: RunDir, live_run: RunDir, opts: ValidateOptions,
                  say: Callable[[str], None]) -> None:
    """``validation.json``, the HTML sections of both runs' reports, and the terminal table."""
    from results.report import VALIDATION_DIR

    text = dumps(doc)
    (live_run.path / "validation.json").write_text(text, encoding="utf-8")
    section = render_html(doc)
    for folder, name in ((sim_run.path / VALIDATION_DIR, f"{live_run.path.name}.html"),
                         (live_run.path / VALIDATION_DIR, "against_simulator.html")):
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / (name + ".tmp")
        tmp.write_text(section, encoding="utf-8")
        os.replace(tmp, folder / name)
    say("")
    say(format_text(doc))
    say(f"\nlive run:     {live_run.path}\nresimulated:  {doc['resimulated_run']}\n"
        f"result:       {live_run.path / 'validation.json'}")
    report = sim_run.path / "report.html"
    if opts.report and report.exists():
        from results.report import build_report

        build_report(sim_run.path, progress=opts.progress)
        say(f"report:       {report} (rebuilt with the validation section)")
    else:
        say(f"report:       python -m results {sim_run.path}   (shows the validation section)")


