"""``python -m live SCENARIO.toml``: run a scenario against live backends."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

EPILOG = """\
examples:
  python -m live scenarios/poisson.toml --emulate 4 --max-duration 30
  python -m live scenarios/burst.toml --set cluster.groups.h100.count=2 \\
      --backends http://127.0.0.1:8001,http://127.0.0.1:8002 --gateway
  python -m live scenarios/poisson.toml --emulate 4 --out runs/live-a --resume

--emulate N starts N emulators (stand-ins for vLLM running the simulator's engine
model) with the scenario's latency profiles, and stops them afterwards. The run
directory has the simulator's layout; `python -m results DIR` reports on it.

validating a simulator run (docs/validation.md):
  python -m live --validate runs/SIM_RUN --emulate 2 --budget-s 120
  python -m live --validate runs/SIM_RUN --spawn-vllm 2 --top 1 --budget-s 600
  python -m live --validate runs/SIM_RUN --backends http://127.0.0.1:8001,http://127.0.0.1:8002

--validate takes the --top best grid points of the run (by its objective), cuts
their workload to fit --budget-s of live replay, simulates that cut again,
replays it live with every strategy and seed, and reports the metrics' errors,
both rankings (Kendall tau-b, top-1) and a verdict.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m live",
        description="Replay a scenario's traffic against live backends (real vLLM or emulators), "
                    "routing with each of its strategies, for every grid point and seed, and "
                    "write the same run directory as the simulator.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", nargs="?", help="scenario TOML file (see scenarios/*.toml)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--backends", metavar="URL,...",
                       help="comma-separated base URLs of running backends, one per backend of "
                            "the scenario's fleet, in its order")
    where.add_argument("--emulate", type=int, metavar="N",
                       help="start N local emulators with the scenario's backend profiles (N "
                            "must equal the fleet size; a one-group fleet is resized to N, except "
                            "with --validate)")
    where.add_argument("--spawn-vllm", type=int, metavar="N",
                       help="--validate only: start N real vLLM-CPU instances (python -m calibrate "
                            "serve, instance i on core i, the model shape of its backend's CPU "
                            "profile) and stop them afterwards; N must equal the fleet size")
    p.add_argument("--gateway", action="store_true",
                   help="send everything through a gateway process (python -m live.gateway) "
                        "running the strategy, instead of routing in the load generator")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="run directory (default: <runs-dir>/<name>-live-<time>-<hash>)")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), metavar="DIR",
                   help="where new run directories go")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out: units already written are not rerun")
    p.add_argument("--seeds", metavar="LIST", help="comma-separated seeds, replacing the scenario's")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a scenario key with a TOML value (repeatable), e.g. "
                        "arrivals.rate=4 or cluster.groups.h100.count=2")
    p.add_argument("--max-duration", type=float, metavar="S",
                   help="bound each unit to S seconds of wall time: later arrivals are not sent "
                        "and requests still running then are recorded as unfinished")
    p.add_argument("--max-requests", type=int, metavar="N",
                   help="send at most the first N requests of each trace")
    p.add_argument("--concurrency", type=int, default=256,
                   help="idle keep-alive connections kept per backend (the load is open-loop: "
                        "requests are never held back waiting for a connection)")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds a request may take before it is recorded as a timeout "
                        "(the scenario's router.timeout_s wins when set)")
    p.add_argument("--vocab-size", type=int, default=32000,
                   help="prompt token ids are drawn below this (the served model's vocabulary)")
    p.add_argument("--model", default=None,
                   help="model name sent in requests (default: none; vLLM then serves its only model)")
    p.add_argument("--api-key", default=None, help="bearer token sent with every request")
    p.add_argument("--validate", metavar="SIM_RUN", type=Path,
                   help="validate a simulator run: rerun its best grid points live (every strategy "
                        "and seed, on the same workload scaled to --budget-s, simulated again at "
                        "that size) and compare metrics and rankings; see docs/validation.md")
    v = p.add_argument_group("validation (with --validate)")
    v.add_argument("--top", type=int, default=1, metavar="K",
                   help="validate the K grid points whose best strategy scored best on the run's "
                        "objective (default: 1)")
    v.add_argument("--points", metavar="ID,...",
                   help="validate these grid point ids instead of the --top best")
    v.add_argument("--budget-s", type=float, default=600.0, metavar="S",
                   help="seconds of live replay in all (default: 600); each point's workload is cut "
                        "so that its units fit their share. Starting backends comes on top")
    v.add_argument("--objective", default=None,
                   help="metric to rank strategies by (default: the sim run's, goodput when it "
                        "has SLOs)")
    v.add_argument("--serve-args", default="", metavar="ARGS",
                   help="extra arguments for each `python -m calibrate serve` of --spawn-vllm, "
                        "e.g. \"--nice -10\" (quoted, one string)")
    v.add_argument("--no-report", action="store_true",
                   help="do not rebuild the sim run's report.html (by default it is rebuilt when "
                        "it exists, with the validation section)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.validate:
        return _validate(parser, args, argv)
    for flag, given in (("--spawn-vllm", args.spawn_vllm), ("--points", args.points),
                        ("--serve-args", args.serve_args), ("--no-report", args.no_report)):
        if given:
            parser.error(f"{flag} goes with --validate SIM_RUN")
    if not args.scenario:
        parser.error("a scenario file is required")
    if not args.backends and not args.emulate:
        parser.error("give --backends URL,... or --emulate N")
    try:
        return _run(args)
    except _UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


class _UserError(Exception):
    pass


def _validate(parser, args, argv) -> int:
    """``--validate SIM_RUN``: the options checked here, the work in ``live.validate``."""
    import shlex
    import signal

    for flag, given in (("a scenario file", args.scenario), ("--resume", args.resume),
                        ("--max-duration", args.max_duration), ("--max-requests", args.max_requests)):
        if given:
            parser.error(f"--validate does not take {flag} (the workload comes from the sim run, "
                         "scaled by --budget-s)")
    from live.loadgen import LoadOptions
    from live.validate import Target, ValidateOptions, ValidationError, validate

    urls = [u.strip().rstrip("/") for u in args.backends.split(",") if u.strip()] if args.backends else None
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()] if args.seeds else None
    except ValueError:
        parser.error(f"--seeds takes comma-separated integers, got {args.seeds!r}")
    opts = ValidateOptions(
        sim_run=args.validate,
        target=Target(backends=urls, emulate=args.emulate or 0, spawn_vllm=args.spawn_vllm or 0,
                      serve_args=tuple(shlex.split(args.serve_args))),
        top=args.top, points=[x for x in args.points.split(",") if x] if args.points else None,
        budget_s=args.budget_s, seeds=seeds, overrides=args.overrides, objective=args.objective,
        out=args.out, runs_dir=args.runs_dir, gateway=args.gateway,
        load=LoadOptions(concurrency=args.concurrency, timeout_s=args.timeout,
                         vocab_size=args.vocab_size, model=args.model, api_key=args.api_key,
                         progress=not args.quiet),
        report=not args.no_report, progress=not args.quiet,
        command="python -m live " + shlex.join(sys.argv[1:] if argv is None else list(argv)))

    def _term(signum, frame):  # SIGTERM: the same clean stop as Ctrl-C (backends are stopped)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _term)
    # A shell starts background jobs with SIGINT ignored; `kill -INT` must still stop the
    # validation cleanly (and stop the vLLM servers it started).
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        doc = validate(opts)
    except ValidationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: backends started here were stopped; the partial live run is kept",
              file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
    if doc["failed_units"]:
        print(f"{len(doc['failed_units'])} live unit(s) failed; errors in {doc['live_run']}/failures",
              file=sys.stderr)
        return 1
    if doc["verdict"]["ranking"] == "failed":
        print(f"the live requests failed (are the backends up?); their errors are in the records of "
              f"{doc['live_run']}", file=sys.stderr)
        return 1
    return 0


def _load(args):
    from scenarios import ScenarioError
    from scenarios.runs import load_for_run

    try:
        scenario, points = load_for_run(args.scenario, args.overrides, args.seeds)
        if args.emulate and len(scenario.cluster.groups) == 1:
            g = scenario.cluster.groups[0]
            if g.count != args.emulate:
                print(f"note: fleet resized to --emulate {args.emulate} "
                      f"(cluster.groups.{g.name}.count was {g.count})")
                scenario, points = load_for_run(
                    args.scenario, args.overrides, args.seeds,
                    {f"cluster.groups.{g.name}.count": args.emulate})
        return scenario, points
    except (ScenarioError, ValueError) as exc:
        raise _UserError(str(exc)) from None


def _run(args) -> int:
    from live.loadgen import LoadOptions
    from live.run import LiveSettings, check_fleet_sizes, open_run, run_scenario
    from results.summary import format_table, summarize_run

    scenario, points = _load(args)
    urls = [u.strip().rstrip("/") for u in args.backends.split(",")] if args.backends else None
    load = LoadOptions(concurrency=args.concurrency, timeout_s=args.timeout,
                       vocab_size=args.vocab_size, model=args.model, api_key=args.api_key,
                       progress=not args.quiet)
    settings = LiveSettings(backends=urls, emulate=args.emulate or 0, gateway=args.gateway,
                            max_duration_s=args.max_duration, max_requests=args.max_requests,
                            load=load)
    try:
        settings.validate()
        check_fleet_sizes(points, settings)
        run, resumed = open_run(args.out, args.runs_dir, scenario, points, settings, args.resume)
    except (ValueError, FileNotFoundError) as exc:
        raise _UserError(str(exc)) from None
    total = len(points) * len(scenario.router.strategies) * len(scenario.seeds)
    print(f"{scenario.name} (live{', via gateway' if args.gateway else ''}): {len(points)} grid "
          f"point(s) x {len(scenario.router.strategies)} strategies x {len(scenario.seeds)} "
          f"seed(s) = {total} runs -> {run.path}" + (" (resuming)" if resumed else ""))

    def on_unit(rep) -> None:
        if rep.error:
            print(f"FAILED {rep.unit.key}: {rep.error}", file=sys.stderr)
        else:
            print(f"{rep.unit.key}: {rep.ok}/{rep.requests} ok in {rep.wall_s:.1f} s "
                  f"(send lag p99 {rep.lag_p99_ms:.2f} ms)")

    try:
        reports = run_scenario(run, scenario, points, settings, on_unit=on_unit)
    except ValueError as exc:
        raise _UserError(str(exc)) from None
    except KeyboardInterrupt:
        print(f"\ninterrupted; finished units are kept. Continue with: python -m live "
              f"{args.scenario} ... --out {run.path} --resume", file=sys.stderr)
        return 130
    failed = [r for r in reports if r.error]
    if run.record_files():
        summary = summarize_run(run.path, progress=not args.quiet)
        print()
        print(format_table(summary))
    print(f"\nrun directory: {run.path}\nreport:        python -m results {run.path}")
    if failed:
        print(f"{len(failed)} unit(s) failed; errors in {run.path / 'failures'}", file=sys.stderr)
        return 1
    return 0
