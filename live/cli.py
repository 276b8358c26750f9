"""``python -m live SCENARIO.toml``: run a scenario against live backends."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

EPILOG = """\
examples:
  python -m live scenarios/poisson.toml --emulate 4 --set arrivals.rate=16 --seeds 0 \
      --max-requests 80      # about a minute
  python -m live scenarios/burst.toml --set cluster.groups.h100.count=2 \\
      --backends http://127.0.0.1:8001,http://127.0.0.1:8002 --gateway
  python -m live scenarios/poisson.toml --emulate 4 --out runs/live-a --resume

--emulate N starts N emulators (stand-ins for vLLM running the simulator's engine
model) with the scenario's latency profiles, and stops them afterwards. The run
directory has the simulator's layout; `python -m results DIR` reports on it.

validating a simulator run (docs/validation.md): `python -m live --validate SIM_RUN ...`
runs `python -m validation SIM_RUN ...` with the same arguments; see its --help.

stopping: Ctrl-C (or kill -INT / kill) stops the unit in progress, keeps every
finished unit, stops the backends started here and prints the command that resumes
the run; a second Ctrl-C stops at once.
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
                            "must equal the fleet size; a one-group fleet is resized to N)")
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
                        "and requests still running then are recorded as unfinished (a unit "
                        "with more than 1%% unfinished is flagged and not ranked)")
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
                   help="validate a simulator run instead: the same as `python -m validation SIM_RUN` "
                        "with the other arguments (see its --help and docs/validation.md)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


#: Options of ``python -m validation`` only.
VALIDATION_ONLY = ("--spawn-vllm", "--top", "--points", "--budget-s", "--objective", "--serve-args",
                   "--no-report")


def main(argv: Sequence[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    if any(a == "--validate" or a.startswith("--validate=") for a in given):
        return forward_to_validation(given, replace_process=argv is None)
    parser = build_parser()
    for a in given:
        if a.split("=", 1)[0] in VALIDATION_ONLY:
            parser.error(f"{a.split('=', 1)[0]} is an option of validation: python -m validation "
                         "SIM_RUN ... (or python -m live --validate SIM_RUN ...)")
    args = parser.parse_args(given)
    if not args.scenario:
        parser.error("a scenario file is required")
    if not args.backends and not args.emulate:
        parser.error("give --backends URL,... or --emulate N")
    from scenarios.stopping import StopSignals

    # SIGINT even when inherited as ignored (a script's background job), SIGTERM alike;
    # a second signal stops at once (spawned backends die with this process).
    with StopSignals() as stops:
        try:
            return _run(args, stops)
        except _UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("\ninterrupted before any unit ran; nothing to keep", file=sys.stderr)
            return stops.exit_code


def forward_to_validation(given: Sequence[str], replace_process: bool = True) -> int:
    """``--validate SIM_RUN ARGS`` runs ``python -m validation SIM_RUN ARGS``.

    ``validation`` imports ``live`` (never the reverse), so the hand-over is a new
    program: this process is replaced by it (same pid, signals and exit code), or,
    called from Python, it runs as a child.
    """
    import os
    import subprocess

    out: list[str] = []
    runs: list[str] = []
    it = iter(given)
    for a in it:
        if a == "--validate":
            value = next(it, None)
            if value is not None:
                runs.append(value)
        elif a.startswith("--validate="):
            runs.append(a.split("=", 1)[1])
        else:
            out.append(a)
    cmd = [sys.executable, "-m", "validation", *runs, *out]
    if replace_process:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, cmd)
    return subprocess.call(cmd)


class _UserError(Exception):
    pass


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


def _preflight(scenario, points) -> None:
    """What ``python -m scenarios check`` and ``python -m sim`` check before a run: the
    latency profiles resolve (emulators serve them), strategies build, the trace fits."""
    from scenarios import ScenarioError
    from scenarios.preflight import check_runnable
    from sim.latency import load_profile

    try:
        check_runnable(scenario, points, load_profile)
    except ScenarioError as exc:
        raise _UserError(str(exc)) from None


def resume_command(args, run_path: Path) -> str:
    """The command that continues this live run: every option that shapes it, plus --resume."""
    import shlex

    from scenarios.stopping import python_command

    parts = [python_command(), "-m", "live", args.scenario]
    for item in args.overrides:
        parts += ["--set", item]
    for flag, value in (("--seeds", args.seeds), ("--backends", args.backends),
                        ("--emulate", args.emulate), ("--max-duration", args.max_duration),
                        ("--max-requests", args.max_requests), ("--model", args.model)):
        if value is not None:
            parts += [flag, str(value)]
    defaults = build_parser().parse_args([])
    for flag, name in (("--concurrency", "concurrency"), ("--timeout", "timeout"),
                       ("--vocab-size", "vocab_size")):
        if getattr(args, name) != getattr(defaults, name):
            parts += [flag, str(getattr(args, name))]
    if args.gateway:
        parts.append("--gateway")
    if args.quiet:
        parts.append("--quiet")
    text = shlex.join(parts + ["--out", str(run_path), "--resume"])
    if args.api_key:
        text += " --api-key KEY"  # never echoed: give the same key again
    return text


def _run(args, stops) -> int:
    from live.loadgen import LoadOptions
    from live.run import LiveSettings, check_fleet_sizes, open_run, run_scenario
    from results.health import INCOMPLETE_SHARE
    from results.summary import format_table, summarize_run

    scenario, points = _load(args)
    _preflight(scenario, points)
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
    except (ValueError, OSError) as exc:
        raise _UserError(str(exc)) from None
    resume_hint = resume_command(args, run.path)
    stops.force_message = (f"stopped at once; finished units are kept. Continue with:\n"
                           f"  {resume_hint}\n")
    total = len(points) * len(scenario.router.strategies) * len(scenario.seeds)
    print(f"{scenario.name} (live{', via gateway' if args.gateway else ''}): {len(points)} grid "
          f"point(s) x {len(scenario.router.strategies)} strategies x {len(scenario.seeds)} "
          f"seed(s) = {total} runs -> {run.path}" + (" (resuming)" if resumed else ""), flush=True)

    def on_unit(rep) -> None:
        if rep.error:
            print(f"FAILED {rep.unit.key}: {rep.error}", file=sys.stderr)
        else:
            print(f"{rep.unit.key}: {rep.ok}/{rep.requests} ok in {rep.wall_s:.1f} s "
                  f"(send lag p99 {rep.lag_p99_ms:.2f} ms)", flush=True)
            if rep.requests and rep.unfinished / rep.requests > INCOMPLETE_SHARE:
                cut = (f"--max-duration {args.max_duration:g} s" if args.max_duration
                       else "the time bound")
                print(f"  WARNING: {rep.unfinished / rep.requests:.0%} of its requests were still "
                      f"running at {cut}: this unit is incomplete and will not be ranked",
                      file=sys.stderr, flush=True)

    try:
        reports = run_scenario(run, scenario, points, settings, on_unit=on_unit)
    except ValueError as exc:
        raise _UserError(str(exc)) from None
    except KeyboardInterrupt:
        print(f"\ninterrupted; finished units are kept. Continue with:\n  {resume_hint}",
              file=sys.stderr)
        return stops.exit_code
    failed = [r for r in reports if r.error]
    if run.record_files():
        summary = summarize_run(run.path, progress=not args.quiet)
        print()
        print(format_table(summary))
    print(f"\nrun directory: {run.path}\nreport:        python -m results {run.path}")
    if failed:
        print(f"{len(failed)} unit(s) failed; errors in {run.path / 'failures'}. After fixing the "
              f"cause:\n  {resume_hint}", file=sys.stderr)
        return 1
    return 0
