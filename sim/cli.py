"""``python -m sim SCENARIO.toml``: simulate every grid point x strategy x seed."""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

EPILOG = """\
examples:
  python -m sim scenarios/burst.toml
  python -m sim scenarios/heterogeneous.toml --seeds 0,1,2,3,4 --workers 2
  python -m sim scenarios/poisson.toml --set arrivals.rate=[4,8,16] --out runs/rates
  python -m sim scenarios/poisson.toml --out runs/rates --resume      # after Ctrl-C or a crash
  python -m sim --list-profiles
  python -m sim scenarios/poisson.toml --capacity --slo-attainment 0.9   # highest rate per strategy
  python -m sim scenarios/poisson.toml --export-trace traces/   # Mooncake + vLLM custom JSONL
  python -m sim runs/<id> --export-trace traces/                # the workload of a finished run

The run directory holds manifest.json, scenario.toml, one records Parquet file per
(point, strategy, seed), failures/ and summary.json; `python -m results DIR` turns
it into report.html with charts.

stopping: Ctrl-C (or kill -INT / kill) stops within seconds, keeps every finished
unit and prints the command that resumes the run; a second Ctrl-C stops at once.
Worker processes end with this command, however it ends.
"""


def _workers(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of processes, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (1 runs in this process), got {n}")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sim",
        description="Simulate a fleet of vLLM replicas behind each routing strategy of a "
                    "scenario, for every grid point and seed, and compare them.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("scenario", nargs="?",
                   help="scenario TOML file, or the name of a shipped one (burst, poisson, ...; "
                        "`python -m scenarios list`)")
    p.add_argument("--out", metavar="DIR",
                   help="run directory (default: runs/<name>-<time>-<hash>); with --resume, "
                        "the run to continue")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run: finished units are not redone (the "
                        "scenario must be unchanged); without --out, the newest matching run "
                        "under runs/")
    p.add_argument("--workers", type=_workers, default=None, metavar="N",
                   help="parallel worker processes, >= 1 (default: all cores; 1 runs the units "
                        "in this process)")
    p.add_argument("--seeds", metavar="LIST",
                   help="comma-separated seeds, replacing the scenario's (e.g. 0,1,2)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a scenario key with a TOML value, e.g. arrivals.rate=[2,4] "
                        "or router.timeout_s=30 (repeatable)")
    p.add_argument("--mode", choices=("fast", "exact"),
                   help="decode stepping: 'fast' jumps over unchanging decode batches in closed "
                        "form, 'exact' simulates every step (same results, slower)")
    p.add_argument("--ray", metavar="ADDRESS",
                   help="run units on a Ray cluster: 'auto', an address, or 'local' (needs the "
                        "[ray] extra)")
    p.add_argument("--objective", default=None,
                   help="metric to rank strategies by (default: request_goodput when the "
                        "scenario has SLOs, else request_throughput)")
    p.add_argument("--runs-dir", default="runs", metavar="DIR",
                   help="where new run directories go (default: runs)")
    p.add_argument("--capacity", action="store_true",
                   help="instead of the grid: per strategy and fleet, search the highest load "
                        "(arrival rate, or number of clients with pattern 'concurrency') at which "
                        "SLO attainment, averaged over the seeds, stays at --slo-attainment "
                        "(needs [slo]); writes capacity.json into the run directory")
    p.add_argument("--slo-attainment", type=float, default=0.9, metavar="F",
                   help="with --capacity: the attainment to keep, in (0, 1] (default 0.9)")
    p.add_argument("--capacity-tolerance", type=float, default=0.05, metavar="F",
                   help="with --capacity: stop when the bracket is narrower than this share of "
                        "its lower end (default 0.05)")
    p.add_argument("--export-trace", metavar="DIR", default=None,
                   help="instead of simulating: write every grid point and seed's requests (arrival, "
                        "lengths, session, turn, block hashes) under DIR as Mooncake JSONL and "
                        "vLLM custom-dataset JSONL; SCENARIO may also be a run directory")
    p.add_argument("--trace-format", default="mooncake,vllm_custom", metavar="LIST",
                   help="with --export-trace: mooncake, vllm_custom or both (default)")
    p.add_argument("--hash-block-size", type=int, default=None, metavar="N",
                   help="with --export-trace: tokens per Mooncake hash id (default: the workload's "
                        "block_size, exact; 512 as Mooncake's own traces)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--list-profiles", action="store_true",
                   help="list the shipped latency profiles (fitted and derived) and exit")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from scenarios.stopping import StopSignals

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_profiles:
        return _list_profiles()
    if not args.scenario:
        parser.error("a scenario file is required (or --list-profiles)")
    with StopSignals() as stops:
        try:
            if args.export_trace:
                return _export(args)
            return _run(args, stops)
        except _UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:  # stopped before any unit ran (loading, tokenizing)
            print("\ninterrupted before the sweep started; nothing to keep", file=sys.stderr)
            return stops.exit_code


class _UserError(Exception):
    pass


def resume_command(args: argparse.Namespace, run_path: Path) -> str:
    """The command that continues this run: every option that shapes it, plus --resume."""
    from scenarios.stopping import python_command

    parts = [python_command(), "-m", "sim", args.scenario]
    for item in args.overrides:
        parts += ["--set", item]
    for flag, value in (("--seeds", args.seeds), ("--mode", args.mode),
                        ("--objective", args.objective), ("--workers", args.workers),
                        ("--ray", args.ray)):
        if value is not None:
            parts += [flag, str(value)]
    if args.quiet:
        parts.append("--quiet")
    return shlex.join(parts + ["--out", str(run_path), "--resume"])


def _check_objective(objective: str | None) -> None:
    """An unknown or unrankable ``--objective`` fails now, not after the sweep."""
    if objective is None:
        return
    from results.stats import direction

    try:
        direction(objective)
    except ValueError as exc:
        raise _UserError(f"--objective: {exc}") from None


def _list_profiles() -> int:
    from sim.latency import load_profile, shipped_profiles

    profiles = [load_profile(name) for name in shipped_profiles()]
    # Fitted and derived profiles of the same model and hardware end up next to each other.
    def order(p):
        gpu = p.source.get("spec", {}).get("gpu", p.name.split("-")[0])
        return p.served_model.replace("-", ""), p.hardware.split("x")[0], gpu[:4], p.name

    profiles.sort(key=order)
    print(f"{'profile':38s} {'kind':8s} {'kv_blocks':>9s}  hardware / description")
    for p in profiles:
        kind = "derived" if p.source.get("kind") == "derived" else "fitted"
        tag = " (provisional)" if p.provisional and kind == "fitted" else ""
        print(f"{p.name:38s} {kind:8s} {p.engine.num_kv_blocks:9d}  {p.hardware}: {p.description}{tag}")
    print("\nDerive any other model and GPU: python -m sim.profiles derive --help, or in a scenario "
          'profile = { model = "llama-3.1-8b", gpu = "l40s", tp = 1 } (docs/derived-profiles.md).')
    return 0


def _load(args):
    from scenarios import ScenarioError
    from scenarios.runs import load_for_run

    try:
        return load_for_run(args.scenario, args.overrides, args.seeds,
                            {"router.mode": args.mode} if args.mode else None)
    except (ScenarioError, ValueError) as exc:
        raise _UserError(str(exc)) from None


def _preflight(scenario, points) -> None:
    """Fail before anything runs: the checks ``python -m scenarios check`` makes
    (profiles, strategies, trace size), then every fleet as the simulator builds it."""
    from scenarios import ScenarioError
    from scenarios.preflight import check_runnable
    from sim.fleet import FleetError, cluster_config
    from sim.latency import load_profile

    try:
        check_runnable(scenario, points, load_profile)
    except ScenarioError as exc:
        raise _UserError(str(exc)) from None
    for p in points:
        where = p.scenario.source_path or "scenario"
        try:
            cluster_config(p.scenario)
        except FleetError as exc:
            raise _UserError(f"{where}: {exc}") from None


def _open_run(args, scenario, points):
    from results.rundir import RunDir
    from scenarios.runs import resume_refusal
    from sim.sweep import build_manifest, new_experiment_id, scenario_digest

    digest = scenario_digest(scenario)
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise _UserError(f"--out {args.out} is a file; give a directory for the run "
                         "(it is created if missing)")
    if args.resume:
        path = Path(args.out) if args.out else _latest_run(Path(args.runs_dir), scenario.name, digest)
        try:
            run = RunDir.open(path)
            manifest = run.manifest
        except (OSError, ValueError) as exc:
            raise _UserError(f"cannot resume: {exc}") from None
        if manifest.get("scenario_sha256") != digest:
            raise _UserError(resume_refusal(manifest, scenario, path))
        return run, True
    experiment_id = new_experiment_id(scenario, digest)
    path = Path(args.out) if args.out else Path(args.runs_dir) / experiment_id
    if (path / "manifest.json").exists():
        raise _UserError(f"{path} already holds a run; use --resume to continue it, or another --out")
    text = scenario.source_text if getattr(scenario, "source_text", None) else None
    manifest = build_manifest(scenario, points, experiment_id, digest)
    try:
        return RunDir.create(path, manifest, text), False
    except OSError as exc:
        raise _UserError(f"cannot create the run directory {path}: {exc}") from None


def _latest_run(root: Path, name: str, digest: str) -> Path:
    import json

    candidates = []
    for m in root.glob(f"{name}-*/manifest.json"):
        try:
            if json.loads(m.read_text()).get("scenario_sha256") == digest:
                candidates.append(m.parent)
        except (OSError, ValueError):
            continue
    if not candidates:
        raise _UserError(f"no run of this scenario under {root}/ to resume; give --out DIR")
    return max(candidates, key=lambda p: p.stat().st_mtime)


def _warm_workloads(points, seeds, quiet: bool) -> None:
    """Load and tokenize each distinct workload once, here, before workers start.

    The workload package caches the result on disk, so workers read it instead of
    tokenizing in parallel; and a missing dataset fails now, before anything runs.
    """
    from workload import build_trace

    seen = set()
    for p in points:
        sc = p.scenario
        key = repr((asdict(sc.workload), asdict(sc.arrivals), sc.num_requests, sc.duration_s))
        if key in seen:
            continue
        seen.add(key)
        try:
            trace = build_trace(asdict(sc.workload), asdict(sc.arrivals), seed=int(seeds[0]),
                                num_requests=sc.num_requests, duration_s=sc.duration_s,
                                progress=not quiet)
        except MemoryError:
            size = (f"num_requests = {sc.num_requests:,}" if sc.num_requests
                    else f"duration_s = {sc.duration_s:g}")
            raise _UserError(f"workload of point {p.point_id}: not enough memory for a trace of "
                             f"{size}; lower it") from None
        except (OSError, ValueError, RuntimeError, ImportError) as exc:
            raise _UserError(f"workload of point {p.point_id}: {exc}") from None
        if trace.meta.get("warning"):  # e.g. closed sessions that never reach their rate
            print(f"note: point {p.point_id}: {trace.meta['warning']}", file=sys.stderr)


def _run(args, stops) -> int:
    from tqdm import tqdm

    from results.summary import format_table
    from sim.sweep import plan_tasks, run_sweep

    _check_objective(args.objective)
    scenario, points = _load(args)
    _preflight(scenario, points)
    if args.capacity:
        return _capacity(args, scenario, points, stops)
    seeds = list(scenario.seeds)
    strategies = list(scenario.router.strategies)
    _warm_workloads(points, seeds, args.quiet)
    run, resumed = _open_run(args, scenario, points)
    resume_hint = resume_command(args, run.path)
    stops.force_message = (f"stopped at once; finished units are kept. Continue with:\n"
                           f"  {resume_hint}\n")
    total = len(points) * len(strategies) * len(seeds)
    print(f"{scenario.name}: {len(points)} grid point(s) x {len(strategies)} strategies x "
          f"{len(seeds)} seed(s) = {total} simulations -> {run.path}"
          + (" (resuming)" if resumed else ""), flush=True)

    started = time.perf_counter()
    totals = {"requests": 0, "busy": 0.0, "sim": 0.0}
    bar = tqdm(total=total, desc="simulating", unit="run", disable=args.quiet)

    def on_outcome(o) -> None:
        bar.update(1)
        totals["requests"] += o.num_requests
        totals["busy"] += o.wall_s
        totals["sim"] += o.sim_time_s
        if o.error:
            bar.write(f"FAILED {o.unit.key}: {o.error.strip().splitlines()[-1]}")

    def on_pool(pool) -> None:
        if pool is not None:
            pool_hook[0] = stops.on_force(pool.kill_now)
        elif pool_hook[0] is not None:
            stops.remove(pool_hook[0])

    pool_hook = [None]
    try:
        _, already = plan_tasks(run, points, seeds, strategies)
        bar.update(already)
        try:
            result = run_sweep(run, points, seeds, strategies, workers=args.workers,
                               ray_address=args.ray, on_outcome=on_outcome,
                               objective=args.objective, on_pool=on_pool)
        except KeyboardInterrupt:  # stopped while summarising what had finished
            result = None
    finally:
        bar.close()
    if result is None:
        print(f"\ninterrupted; finished units are kept. Continue with:\n  {resume_hint}",
              file=sys.stderr)
        return stops.exit_code
    wall = time.perf_counter() - started
    for key, why in result.set_aside.items():
        print(f"redone {key}: its records file did not read back ({why})", file=sys.stderr)
    if result.summary is not None:
        print()
        print(format_table(result.summary))
    if totals["busy"] > 0:
        print(f"\nsimulated {totals['requests']:,} requests in {wall:.1f} s wall "
              f"({totals['requests'] / totals['busy']:,.0f} requests per busy worker-second, "
              f"{totals['sim'] / totals['busy']:,.0f}x real time per worker)")
    if result.skipped:
        print(f"{result.skipped} unit(s) were already done and not rerun")
    if result.failures:
        print(f"\n{len(result.failures)} unit(s) failed; errors in {run.path / 'failures'}. "
              f"After fixing the cause:\n  {resume_hint}", file=sys.stderr)
    if result.interrupted:
        print(f"\ninterrupted; finished units are kept. Continue with:\n  {resume_hint}",
              file=sys.stderr)
        return stops.exit_code
    print(f"\nrun directory: {run.path}\nreport:        python -m results {run.path}")
    return 1 if result.failures else 0


def _export(args) -> int:
    """``--export-trace``: the traces of a scenario (or of a run directory), in other tools' formats."""
    from sim.export import export_traces, run_traces, scenario_traces

    formats = [f.strip() for f in args.trace_format.split(",") if f.strip()]
    if (Path(args.scenario) / "manifest.json").is_file():
        if args.overrides or args.seeds:
            raise _UserError("--set and --seeds do not apply to a run directory: its traces are "
                             "the ones it ran")
        specs = list(run_traces(args.scenario))
    else:
        scenario, points = _load(args)
        specs = list(scenario_traces(scenario, points))
    started = time.perf_counter()

    def on_file(path, n) -> None:
        if not args.quiet:
            print(f"{path}  ({n:,} requests)")

    try:
        written = export_traces(specs, args.export_trace, formats,
                                hash_block_size=args.hash_block_size, on_file=on_file)
    except (OSError, ValueError) as exc:
        raise _UserError(f"--export-trace: {exc}") from None
    print(f"{len(written)} file(s) under {args.export_trace} in {time.perf_counter() - started:.1f} s; "
          "replay with: vllm bench serve --dataset-name timed_trace --dataset-path FILE.mooncake.jsonl "
          "--timed-trace-chunk-hash-size BLOCK --timed-trace-sec-multiplier 0.001, or "
          "--dataset-name custom --dataset-path FILE.vllm-custom.jsonl --custom-output-len -1 "
          "--skip-chat-template --disable-shuffle")
    return 0


def _capacity(args, scenario, points, stops) -> int:
    """``--capacity``: the bracket search of ``sim.capacity``, its table and ``capacity.json``."""
    from tqdm import tqdm

    from sim.capacity import CapacityOptions, capacity_command

    if args.resume:
        raise _UserError("--capacity does not resume: start it again (probes are not kept)")
    options = CapacityOptions(target=args.slo_attainment, rel_tol=args.capacity_tolerance)
    try:
        options.validate()
    except ValueError as exc:
        raise _UserError(str(exc)) from None
    _warm_workloads(points, list(scenario.seeds), args.quiet)
    run, _ = _open_run(args, scenario, points)
    started = time.perf_counter()
    bar = tqdm(desc="capacity probes", unit="probe", disable=args.quiet)
    hook = [None]

    def on_pool(pool) -> None:
        if pool is not None:
            hook[0] = stops.on_force(pool.kill_now)
        elif hook[0] is not None:
            stops.remove(hook[0])

    def on_probe(fleet_id, strategy, load, values) -> None:
        bar.update(1)
        bar.set_postfix_str(f"{strategy} @ {load:.4g}", refresh=False)

    try:
        text = capacity_command(run, scenario, points, options, workers=args.workers or 0,
                                on_probe=on_probe, on_pool=on_pool)
    except ValueError as exc:
        raise _UserError(str(exc)) from None
    except KeyboardInterrupt:
        print("\ninterrupted; the capacity search keeps nothing", file=sys.stderr)
        return stops.exit_code
    finally:
        bar.close()
    print()
    print(text)
    print(f"\n{time.perf_counter() - started:.1f} s wall\nrun directory: {run.path}\n"
          f"report:        python -m results {run.path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
