"""Run a scenario live: every grid point x strategy x seed against real HTTP backends.

The run directory is the simulator's (``results.rundir.RunDir``): the same
manifest keys (``mode = "live"``), one record file per unit, resumable, so
``python -m results runs/<id>`` reads it unchanged. Backends are given URLs or
emulators started per grid point with the point's latency profiles (``--emulate``).
Between units the backends are reset when they allow it (emulators:
``POST /_emulator/reset``; vLLM: ``POST /reset_prefix_cache``, served when vLLM
runs with ``VLLM_SERVER_DEV_MODE=1``), so each strategy starts from a cold
prefix cache as in the simulator.

``run_unit`` is the reusable piece (one strategy, one seed, one trace, given
backends): ``validation`` reruns simulated units through it.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import routing
from live.emulator.spawn import EmulatorSpec, spawn_specs
from live.router import LiveRouter
from live.gateway.spawn import start_gateway
from live.loadgen import LoadOptions, ReplayResult, replay
from results.counters import difference
from results.records import RunLabels
from scenarios.runs import base_manifest, new_experiment_id, resume_refusal, scenario_digest
from results.rundir import RunDir, Unit
from workload import build_trace
from workload.trace import Trace



@dataclass
class LiveSettings:
    """How a scenario runs live (the command line's options)."""

    backends: list[str] | None = None  # URLs, or None with ``emulate``
    emulate: int = 0
    gateway: bool = False
    max_duration_s: float | None = None
    max_requests: int | None = None
    load: LoadOptions | None = None

    def validate(self) -> None:
        if bool(self.backends) == bool(self.emulate):
            raise ValueError("give exactly one of --backends URL,... or --emulate N")
        if self.emulate < 0:
            raise ValueError(f"--emulate must be >= 1, got {self.emulate}")
        if self.max_duration_s is not None and not self.max_duration_s > 0:
            raise ValueError(f"--max-duration must be > 0, got {self.max_duration_s}")
        if self.max_requests is not None and self.max_requests < 1:
            raise ValueError(f"--max-requests must be >= 1, got {self.max_requests}")


# --- manifest ----------------------------------------------------------------------------
def build_manifest(scenario, points, experiment_id: str, digest: str,
                   settings: LiveSettings) -> dict[str, Any]:
    """The run's manifest: the scenario part (``scenarios.runs``) and live mode's."""
    load = settings.load or LoadOptions()
    manifest = base_manifest(scenario, points, experiment_id, digest, "live")
    manifest["live"] = {
        "backends": settings.backends or f"{settings.emulate} emulators (stand-ins for vLLM)",
        "emulated": bool(settings.emulate),
        "gateway": settings.gateway,
        "max_duration_s": settings.max_duration_s,
        "max_requests": settings.max_requests,
        "concurrency": load.concurrency,
        "timeout_s": load.timeout_s,
    }
    return manifest


# --- backends ------------------------------------------------------------------------------
#: The emulators' KV-event publisher when a strategy routes on exact cache mirrors.
KV_EVENTS_CONFIG = json.dumps({"enable_kv_cache_events": True, "endpoint": "tcp://*:0",
                               "replay_endpoint": "tcp://*:0"})


def wants_kv_events(point) -> bool:
    """Whether a strategy of the point routes on each backend's exact cache (KV events)."""
    return any(routing.build(s.name, **s.params).needs_precise_prefix
               for s in point.scenario.router.strategies)


def emulator_specs(point, seed: int = 0) -> list[EmulatorSpec]:
    """One emulator per backend of a grid point, with its group's profile and engine limits.

    Emulators publish KV-cache events (found on ``/kv_event_sources``) when a strategy
    routes on them; otherwise they build none, which keeps the engine's fast paths.
    """
    events = wants_kv_events(point)
    specs = []
    for i, (_, group) in enumerate(point.scenario.backends()):
        args = ["--block-size", str(group.block_size), "--seed", str(seed + i)]
        for flag, value in (("--num-kv-blocks", group.num_kv_blocks),
                            ("--max-num-seqs", group.max_num_seqs),
                            ("--max-num-batched-tokens", group.max_num_batched_tokens)):
            if value:
                args += [flag, str(value)]
        if not group.enable_prefix_caching:
            args.append("--no-prefix-caching")
        if events:
            args += ["--kv-events-config", KV_EVENTS_CONFIG]
        # A derived profile (a table) travels as its JSON text; load_profile reads either.
        profile = group.profile if isinstance(group.profile, str) else json.dumps(group.profile, sort_keys=True)
        specs.append(EmulatorSpec(profile, tuple(args)))
    return specs


def backend_kv_blocks(point) -> list[int] | None:
    """Each backend's KV blocks as the simulator sizes them (``sim.fleet``), which also
    sizes its router's approximate index of that backend's cache; None if a profile is
    missing (the router then uses its default size)."""
    from sim.latency import ProfileError, load_profile

    sizes = []
    for _, group in point.scenario.backends():
        if group.num_kv_blocks:
            sizes.append(int(group.num_kv_blocks))
            continue
        try:
            sizes.append(load_profile(group.profile).engine.kv_blocks_at(group.block_size))
        except ProfileError:
            return None
    return sizes


def check_fleet_sizes(points, settings: LiveSettings) -> None:
    """``ValueError`` unless every grid point has as many backends as were given."""
    given = len(settings.backends) if settings.backends else settings.emulate
    flag = "--backends gives" if settings.backends else "--emulate is"
    for point in points:
        names = [b for b, _ in point.scenario.backend_names()]
        if len(names) != given:
            raise ValueError(
                f"grid point {point.point_id} has {len(names)} backends ({', '.join(names)}) but "
                f"{flag} {given}; match them, e.g. with --set cluster.groups.<name>.count=N")


@contextlib.contextmanager
def point_backends(point, settings: LiveSettings) -> Iterator[list[str]]:
    """The URLs serving a grid point: the given ones, or emulators started for it."""
    check_fleet_sizes([point], settings)
    if settings.backends:
        yield list(settings.backends)
        return
    with spawn_specs(emulator_specs(point)) as children:
        yield [c.url for c in children]


def reset_backends(urls: Sequence[str], emulated: bool, timeout_s: float = 15.0) -> list[str]:
    """Cold caches before a unit: emulators must reset; vLLM resets if it serves the endpoint.

    Returns what could not be reset, one line per backend (empty: every cache is cold).
    vLLM's dev endpoint answers ``{"success": false}`` while blocks are still held (the
    last unit's requests finishing): that is retried until ``timeout_s``. A vLLM without
    the endpoint (404: started without ``VLLM_SERVER_DEV_MODE=1``) or one that does not
    answer keeps its cache: the unit then starts warm, which the caller must record.
    """
    path = "/_emulator/reset" if emulated else "/reset_prefix_cache"
    problems = []
    for url in urls:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                req = urllib.request.Request(url + path, data=b"", method="POST")
                with urllib.request.urlopen(req, timeout=5.0) as resp:
                    body = resp.read()
                if emulated or _reset_succeeded(body):
                    break
                if time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                problems.append(f"{url}: the prefix cache was not reset (blocks still in use "
                                f"after {timeout_s:.0f} s; the unit starts warm)")
                break
            except urllib.error.HTTPError as exc:
                # 409: the emulator still aborts the last unit's requests; try again.
                if emulated and exc.code == 409 and time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                if emulated:
                    raise RuntimeError(f"cannot reset emulator {url}: HTTP {exc.code}") from None
                hint = (" (start vLLM with VLLM_SERVER_DEV_MODE=1 to serve it)"
                        if exc.code == 404 else "")
                problems.append(f"{url}: POST {path} answered HTTP {exc.code}{hint}; "
                                "the unit starts with a warm cache")
                break
            except (urllib.error.URLError, OSError) as exc:
                if emulated:
                    raise RuntimeError(f"cannot reset emulator {url}: {exc}") from None
                problems.append(f"{url}: POST {path} failed ({exc}); the unit starts with a warm cache")
                break
    return problems


def note_warm_caches(run: RunDir, unit: Unit, problems: Sequence[str]) -> None:
    """A unit that started on a cache not reset: in the manifest (``warm_caches``) and on stderr."""
    import sys

    notes = dict(run.manifest.get("warm_caches") or {})
    notes[unit.key] = list(problems)
    run.update_manifest(warm_caches=notes)
    for line in problems:
        print(f"warning: {unit.key}: {line}", file=sys.stderr)


def _reset_succeeded(body: bytes) -> bool:
    """vLLM 0.32 answers ``{"success": bool}``; older servers answer 200 with no body."""
    try:
        doc = json.loads(body or b"{}")
    except ValueError:
        return True
    return not isinstance(doc, dict) or doc.get("success", True) is not False


def scrape_counters(urls: Sequence[str], timeout_s: float = 5.0) -> list[dict[str, float]]:
    """Every backend's cumulative counters now (``results.counters``), as a router scrapes
    ``/metrics``; a backend that does not answer or export them gives NaN."""
    from live.transport.prometheus import parse_scraped_metrics
    from results.counters import COUNTER_FIELDS

    out = []
    for url in urls:
        try:
            with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=timeout_s) as resp:
                m = parse_scraped_metrics(resp.read().decode("utf-8", "replace"))
            out.append({f: float(getattr(m, f)) for f in COUNTER_FIELDS})
        except (urllib.error.URLError, OSError, ValueError):
            out.append({f: float("nan") for f in COUNTER_FIELDS})
    return out


# --- one unit --------------------------------------------------------------------------------
def run_async(coro):
    """Run a coroutine on uvloop when installed (tighter timers), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is installed everywhere but Windows
        return asyncio.run(coro)
    return uvloop.run(coro)


async def run_unit(
    trace: Trace, urls: Sequence[str], names: Sequence[str], groups: Sequence[str],
    strategy_name: str, params: dict[str, Any], seed: int, *, labels: RunLabels,
    scrape_interval_s: float, block_size: int, gateway: bool, load: LoadOptions,
    index_blocks: Sequence[int] | None = None,
) -> ReplayResult:
    """Replay ``trace`` with one strategy: client-side through a ``LiveRouter``, or via a gateway.

    The router hashes prompts in ``block_size`` blocks and sizes its approximate index of
    each backend's cache to ``index_blocks`` (the engines' KV blocks), as the simulator does.
    """
    if gateway:
        extra = ["--block-size", str(block_size)]
        if index_blocks is not None:
            extra += ["--prefix-index-blocks", ",".join(str(int(k)) for k in index_blocks)]
        with start_gateway(urls, strategy_name, params=params, seed=seed, names=names,
                           scrape_interval_s=scrape_interval_s, extra=extra) as url:
            return await replay(trace, gateway_url=url, backend_names=names, labels=labels,
                                options=load)
    strategy = routing.build(strategy_name, seed=seed, **params)
    fleet = LiveRouter(urls, strategy, names=names, groups=groups, block_size=block_size,
                      scrape_interval_s=scrape_interval_s, scrape=True, track_prefix=True,
                      prefix_index_blocks=index_blocks)
    return await replay(trace, router=fleet, labels=labels, options=load)


def point_trace(point, seed: int, settings: LiveSettings) -> Trace:
    """The trace of a (point, seed), cut to ``--max-requests`` and ``--max-duration``."""
    sc = point.scenario
    num = sc.num_requests
    if settings.max_requests is not None and num is not None:
        num = min(num, settings.max_requests)
    trace = build_trace(asdict(sc.workload), asdict(sc.arrivals), seed=seed, num_requests=num,
                        duration_s=sc.duration_s)
    keep = len(trace)
    if settings.max_requests is not None:
        keep = min(keep, settings.max_requests)
    if settings.max_duration_s is not None:
        keep = min(keep, int((trace.arrival_s <= settings.max_duration_s).sum()))
    if keep < len(trace):
        trace = trace.take(list(range(keep)))
    if len(trace) == 0:
        raise ValueError(f"grid point {point.point_id}: no request arrives within "
                         f"--max-duration {settings.max_duration_s}")
    return trace


@dataclass
class UnitReport:
    unit: Unit
    requests: int
    ok: int
    wall_s: float
    lag_p99_ms: float
    error: str = ""
    unfinished: int = 0  # requests still running when the unit's time bound hit


def run_scenario(
    run: RunDir, scenario, points, settings: LiveSettings, *,
    on_unit: Callable[[UnitReport], None] | None = None,
    trace_for: Callable[[Any, int], tuple[Trace, float | None]] | None = None,
) -> list[UnitReport]:
    """Run every unit not yet done; write records; return a report per unit run.

    ``trace_for(point, seed) -> (trace, wall bound in s or None)`` replaces the
    default (``point_trace`` cut by ``--max-requests``/``--max-duration``):
    ``--validate`` replays traces scaled to its time budget.
    """
    import numpy as np

    if trace_for is None:
        def trace_for(point, seed: int) -> tuple[Trace, float | None]:
            return point_trace(point, seed, settings), settings.max_duration_s

    manifest = run.manifest
    experiment_id = manifest["experiment_id"]
    load = settings.load or LoadOptions()
    reports: list[UnitReport] = []
    for point in points:
        todo = [(seed, s) for seed in scenario.seeds for s in scenario.router.strategies
                if not unit_done(run, Unit(point.point_id, s.label, int(seed)))]
        if not todo:
            continue
        sc = point.scenario
        names = [n for n, _ in sc.backend_names()]
        groups = [g for _, g in sc.backend_names()]
        index_blocks = backend_kv_blocks(point)
        timeout = sc.router.timeout_s or load.timeout_s
        unit_load = replace(load, timeout_s=timeout, drain_s=min(load.drain_s, sc.drain_s))
        with point_backends(point, settings) as urls:
            traces: dict[int, tuple[Trace, float | None]] = {}
            for seed, strat in todo:
                unit = Unit(point.point_id, strat.label, int(seed))
                started = time.perf_counter()
                try:
                    if seed not in traces:
                        traces[seed] = trace_for(point, int(seed))
                    trace, bound = traces[seed]
                    warm = reset_backends(urls, emulated=bool(settings.emulate))
                    if warm:
                        note_warm_caches(run, unit, warm)
                    labels = RunLabels(experiment_id, point.point_id, strat.label, int(seed))
                    before = scrape_counters(urls)
                    result = run_async(run_unit(
                        trace, urls, names, groups, strat.name, dict(strat.params), int(seed),
                        labels=labels, scrape_interval_s=float(sc.router.scrape_interval_s),
                        block_size=sc.workload.block_size, gateway=settings.gateway,
                        load=replace(unit_load, max_duration_s=bound), index_blocks=index_blocks))
                    counters = difference(before, scrape_counters(urls),
                                          "backends' /metrics scraped before and after the unit")
                    run.write_unit(unit, result.records, counters)
                    ok = sum(r.status == "ok" for r in result.records)
                    lag = float(np.percentile(result.send_lag_s, 99) * 1e3) if len(
                        result.send_lag_s) else float("nan")
                    unfinished = sum(r.status == "unfinished" for r in result.records)
                    rep = UnitReport(unit, len(result.records), ok, time.perf_counter() - started,
                                     lag, unfinished=unfinished)
                except Exception as exc:  # noqa: BLE001 - recorded per unit, the run goes on
                    import traceback

                    run.record_failure(unit, traceback.format_exc())
                    rep = UnitReport(unit, 0, 0, time.perf_counter() - started, float("nan"),
                                     error=f"{type(exc).__name__}: {exc}")
                reports.append(rep)
                if on_unit:
                    on_unit(rep)
    return reports


def open_run(path: Path | None, runs_dir: Path, scenario, points, settings: LiveSettings,
             resume: bool) -> tuple[RunDir, bool]:
    """A new run directory, or the one ``--resume`` continues (same scenario only)."""
    digest = scenario_digest(scenario)
    if path is not None and path.exists() and not path.is_dir():
        raise ValueError(f"--out {path} is a file; give a directory for the run (it is created "
                         "if missing)")
    if resume:
        if path is None:
            raise ValueError("--resume needs --out DIR (the run to continue)")
        run = RunDir.open(path)
        manifest = run.manifest
        if manifest.get("scenario_sha256") != digest:
            raise ValueError(resume_refusal(manifest, scenario, path))
        return run, True
    experiment_id = new_experiment_id(scenario, digest, tag="live")
    path = path or runs_dir / experiment_id
    if (path / "manifest.json").exists():
        raise ValueError(f"{path} already holds a run; use --resume to continue it, or another --out")
    manifest = build_manifest(scenario, points, experiment_id, digest, settings)
    return RunDir.create(path, manifest, scenario.source_text or None), False


def unit_done(run: RunDir, unit: Unit) -> bool:
    """Whether a unit is finished: its records file exists and reads back. One that does
    not is set aside (``RunDir.set_aside``) and counts as not done, so it is run again."""
    if not run.is_done(unit):
        return False
    why = run.unreadable(unit)
    if why is None:
        return True
    run.set_aside(unit, why)
    return False
