"""``python -m scenarios``: check scenario files and list the shipped ones."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import routing

from scenarios.errors import ScenarioError
from scenarios.grid import expand_grid
from scenarios.library import scenario_path, shipped_scenarios
from scenarios.loader import load_scenario
from scenarios.overrides import parse_assignment
from scenarios.preflight import check_runnable
from scenarios.schema import Scenario
from sim.latency import load_profile  # the simulator's own profile loader (see docs/architecture.md)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scenarios",
        description="Validate scenario TOML files and show their grids, or list the shipped scenarios.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = sub.add_parser(
        "check",
        help="validate scenario files and print their grid points, strategies and seeds",
        description=(
            "Validate each scenario file exactly as the simulator and live mode will (unknown keys, "
            "types, ranges, strategy names and parameters, latency profiles, whether the trace "
            "fits in memory) and print what it would run: the grid "
            "points with their ids and axis values, the strategies, the seeds and the number of "
            "units (points x strategies x seeds). Exits 1 if any file is invalid."
        ),
    )
    check.add_argument(
        "files", nargs="+", metavar="FILE",
        help="scenario file path, or the name of a shipped scenario (e.g. burst)",
    )
    check.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a key before validation, VALUE in TOML syntax (repeatable), e.g. "
        "--set arrivals.rate=[2,4] --set cluster.groups.h100.count=8 --set seeds=[1]",
    )
    sub.add_parser(
        "list", help="list the scenarios shipped with the package",
        description="List the scenario files shipped inside the package with their descriptions.",
    )
    args = parser.parse_args(argv)
    if args.command == "list":
        return _list()
    return _check(args.files, args.overrides)


def _check(files: list[str], assignments: list[str]) -> int:
    try:
        overrides = dict(parse_assignment(a) for a in assignments)
    except ScenarioError as exc:
        print(f"error: --set {exc}", file=sys.stderr)
        return 2
    failed = 0
    for i, name in enumerate(files):
        if i:
            print()
        try:
            sc = load_scenario(scenario_path(name), overrides)
            # What sim and live check before they start, beyond the schema.
            check_runnable(sc, expand_grid(sc), load_profile)
        except ScenarioError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        _print_summary(sc)
    return 1 if failed else 0


def _print_summary(sc: Scenario) -> None:
    points = expand_grid(sc)
    units = len(points) * len(sc.router.strategies) * len(sc.seeds)
    print(f"{sc.source_path}: OK  scenario {sc.name!r}")
    if sc.description:
        print(f"  {_first_line(sc.description)}")
    amount = [f"{sc.num_requests} requests"] if sc.num_requests else []
    if sc.duration_s:
        amount.append(f"{sc.duration_s:g} s of arrivals")
    print(f"  load:       {' / '.join(amount)}, drain {sc.drain_s:g} s")
    print(f"  workload:   {sc.workload.source}" + (f" ({sc.workload.path})" if sc.workload.path else ""))
    print(f"  arrivals:   {_arrivals(sc)}")
    fleet = ", ".join(f"{g.name}: {g.count} x {g.profile}" for g in sc.cluster.groups)
    print(f"  fleet:      {fleet}")
    strategies = ", ".join(
        s.label + (f" ({s.name}" + "".join(f", {k}={v!r}" for k, v in s.params.items()) + ")"
                   if s.label != s.name or s.params else "")
        for s in sc.router.strategies
    )
    print(f"  strategies: {strategies}")
    for s in sc.router.strategies:
        # Every parameter with the value the run will use (defaults and presets resolved).
        params = routing.effective_parameters(s.name, s.params)
        if params:
            shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
            print(f"    {s.label}: {shown}")
    print(f"  seeds:      {', '.join(map(str, sc.seeds))}")
    slo = ", ".join(
        f"{k} <= {getattr(sc.slo, k):g}" for k in ("ttft_ms", "tpot_ms", "e2el_ms") if getattr(sc.slo, k)
    )
    print(f"  slo:        {slo or '(none: goodput not computed)'}")
    print(
        f"  grid:       {len(points)} point(s) x {len(sc.router.strategies)} strategies x "
        f"{len(sc.seeds)} seeds = {units} units"
    )
    width = max(len(p.point_id) for p in points)
    for p in points:
        backends = len(p.scenario.backend_names())
        print(f"    {p.point_id:<{width}}  {p.label}  [{backends} backends]")


#: The [arrivals] keys each pattern uses.
_PATTERN_KEYS = {
    "poisson": ("rate",), "gamma": ("rate", "burstiness"), "constant": ("rate",),
    "burst": ("base_rate", "peak_rate", "on_s", "off_s"), "replay": ("time_scale", "target_rate"),
    "concurrency": ("concurrency",),
}


def _arrivals(sc: Scenario) -> str:
    from workload.thinktime import describe_think

    a = sc.arrivals
    patterns = a.pattern if isinstance(a.pattern, list) else [a.pattern]
    keys = dict.fromkeys(k for p in patterns for k in _PATTERN_KEYS[p])
    text = f"{a.pattern} " + " ".join(f"{k}={getattr(a, k)}" for k in keys)
    text += f" sessions={a.sessions}"
    if "closed" in (a.sessions if isinstance(a.sessions, list) else [a.sessions]):
        text += f" think_time={describe_think(a.think_time)}"
    return text


def _list() -> int:
    shipped = shipped_scenarios()
    width = max((len(n) for n in shipped), default=0)
    for name, path in shipped.items():
        try:
            description = _first_line(load_scenario(path).description)
        except ScenarioError as exc:
            description = f"INVALID: {exc}"
        print(f"{name:<{width}}  {description}")
    print(f"\n({len(shipped)} scenarios in {next(iter(shipped.values())).parent if shipped else '-'}; "
          "check one with `python -m scenarios check NAME`)")
    return 0


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


if __name__ == "__main__":
    sys.exit(main())
