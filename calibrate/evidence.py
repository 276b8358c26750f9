"""What kept campaigns say about the campaign's gates: how often checks met the target on each side of a line.

Why: the steadiness gate's 6% (``calibrate.steady_gate``) and the drift gate's 10%
(``calibrate.drift_gate``) were chosen from the kept checks under ``tests/data``. This
recomputes those splits from the files, so anyone can check the lines, move them, or
add campaigns from another host and see whether they still hold:

    python -m calibrate.evidence                          # every tests/data/checks-* folder
    python -m calibrate.evidence runs/calibration-X --wander-lines 4,6,8 --table

For each check it reads ``check.json`` (the raw largest error, the largest at the
speed the load's own engine steps ran, and the drift of its own reference probes, sent
to the idle engine before each load and after the last), the speed probe before it
(``host-speed.json``: the model core's wander) and its shape's ``profile-reference.json``
(the profiling's drift). A campaign's own layout (``OUT/<shape>/check-K/``) and the
flattened one kept in ``tests/data`` (``<shape>-check-K/``, ``<shape>-profile-reference.json``)
are both read.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from calibrate.campaign import read_json
from calibrate.check import TARGET
from calibrate.drift_gate import profiling_drift
from calibrate.host_probe import wander_unless_stalled
from results.jsonsafe import json_safe

#: Where kept campaigns live, relative to the repository root (wherever the command runs from).
DEFAULT_GLOB = "tests/data/checks-*"
REPO_ROOT = Path(__file__).resolve().parents[1]
#: The core the campaigns' models ran on (``calibrate campaign --cores 0``).
MODEL_CORE = 0


@dataclass(frozen=True)
class CheckEvidence:
    campaign: str
    shape: str
    run: int
    max_abs_err: float
    #: The largest error with each load replayed at the speed its own engine steps ran (NaN without).
    max_abs_err_step_speed: float
    #: The model core's wander in the speed probe before the check (NaN without a probe, inf: stalled).
    wander: float
    #: The reference E2EL after profiling over before, less one (NaN without both timings).
    profiling_drift: float
    #: The check's own reference probes: their largest E2EL ratio over the smallest, less one
    #: (``calibrate.check.reference_speed``; NaN without probes).
    check_drift: float

    @property
    def met(self) -> bool:
        return self.max_abs_err <= TARGET


def _check_folders(campaign: Path) -> list[tuple[str, int, Path]]:
    """(shape, run, folder) of every check under ``campaign``, in either layout."""
    out = []
    for check in sorted(campaign.rglob("check.json")):
        folder = check.parent
        if folder.name.startswith("check-") and folder.name[6:].isdigit():
            out.append((folder.parent.name, int(folder.name[6:]), folder))
        elif "-check-" in folder.name:
            shape, _, run = folder.name.rpartition("-check-")
            if run.isdigit():
                out.append((shape, int(run), folder))
    return out


def _reference(campaign: Path, shape: str) -> dict | None:
    for path in (campaign / shape / "profile-reference.json", campaign / f"{shape}-profile-reference.json"):
        if path.is_file():
            return read_json(path)
    return None


def _wander(folder: Path) -> float:
    report = read_json(folder / "host-speed.json")
    if not report or "per_core" not in (report.get("speed") or {}):
        return math.nan
    try:
        wander = wander_unless_stalled(report, MODEL_CORE)
    except ValueError:
        return math.nan  # no trace of the model's core
    return math.inf if wander is None else wander.cv


def _number(value) -> float:
    """A recorded measurement as a float; NaN where it is missing (None: written as JSON null)."""
    return float(value) if isinstance(value, (int, float)) else math.nan


def read_campaign(campaign: str | Path) -> list[CheckEvidence]:
    """Every check of one kept campaign folder; raises ValueError naming a folder without checks."""
    campaign = Path(campaign)
    if not campaign.is_dir():
        raise ValueError(f"{campaign} is not a folder")
    out = []
    for shape, run, folder in _check_folders(campaign):
        report = read_json(folder / "check.json")
        if not report or "max_abs_err" not in report:
            continue
        out.append(CheckEvidence(campaign.name, shape, run, float(report["max_abs_err"]),
                                 _number((report.get("step_speed") or {}).get("max_abs_err")),
                                 _wander(folder), profiling_drift(_reference(campaign, shape)),
                                 _number((report.get("reference") or {}).get("drift"))))
    if not out:
        raise ValueError(f"{campaign} holds no check.json with a largest error (a calibrate campaign's "
                         "OUT folder, or a tests/data/checks-* folder, is expected)")
    return out


#: The drifts a split can be made on, and the field that holds each.
DRIFTS = {"drift": "profiling_drift", "check drift": "check_drift"}


@dataclass(frozen=True)
class Split:
    """Checks on either side of a line: those below it (|drift| at most it, for either drift) and the rest."""
    what: str
    line: float
    met_within: int
    within: int
    met_beyond: int
    beyond: int

    def sentence(self) -> str:
        inside = "below" if self.what == "wander" else "at most"
        return (f"{self.what} {inside} {self.line:.0%}: {self.met_within} of {self.within} met the target "
                f"({_share(self.met_within, self.within)}); beyond: {self.met_beyond} of {self.beyond} "
                f"({_share(self.met_beyond, self.beyond)})")


def _share(k: int, n: int) -> str:
    return f"{k / n:.0%}" if n else "n/a"


def split(checks: list[CheckEvidence], what: str, line: float) -> Split:
    """The target's hit counts on either side of ``line`` for ``what`` ("wander": the probe's cv below
    the line, as the steadiness gate lets it through; "drift": the profiling's |drift| at most the
    line, as the drift gate keeps it; "check drift": the check's own reference probes' drift at most
    the line). Checks without that measurement are left out."""
    if what == "wander":
        known = [c for c in checks if not math.isnan(c.wander)]
        inside = [c for c in known if c.wander < line]
    elif what in DRIFTS:
        known = [c for c in checks if math.isfinite(getattr(c, DRIFTS[what]))]
        inside = [c for c in known if abs(getattr(c, DRIFTS[what])) <= line]
    else:
        raise ValueError(f"unknown measurement {what!r}; allowed: wander, {', '.join(DRIFTS)}")
    outside = [c for c in known if c not in inside]
    return Split(what, line, sum(c.met for c in inside), len(inside), sum(c.met for c in outside), len(outside))


def _lines(text: str) -> list[float]:
    try:
        values = [float(x) / 100.0 for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected percentages such as 4,6,8, got {text!r}") from None
    if not values or any(not (0 < v < 1) for v in values):
        raise argparse.ArgumentTypeError(f"expected percentages in (0, 100), got {text!r}")
    return values


def _cell(value: float, fmt: str) -> str:
    if math.isinf(value):
        return "stalled"
    return fmt.format(value * 100) if math.isfinite(value) else "n/a"


def table(checks: list[CheckEvidence]) -> str:
    rows = ["| campaign | shape | run | largest | at its steps' speed | wander before | profiling drift "
            "| check drift |", "|---|---|---|---|---|---|---|---|"]
    for c in checks:
        rows.append(f"| {c.campaign} | {c.shape} | {c.run} | {c.max_abs_err * 100:.1f}% | "
                    f"{_cell(c.max_abs_err_step_speed, '{:.1f}%')} | {_cell(c.wander, '{:.1f}%')} | "
                    f"{_cell(c.profiling_drift, '{:+.1f}%')} | {_cell(c.check_drift, '{:.1f}%')} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m calibrate.evidence", description=__doc__.split("\n\n")[0],
                                epilog="Folders: kept campaigns (a calibrate campaign's OUT, or tests/data/checks-*); "
                                       f"default: every {DEFAULT_GLOB}. The target is {TARGET:.0%}.")
    p.add_argument("folders", nargs="*", help=f"campaign folders (default: {DEFAULT_GLOB})")
    p.add_argument("--wander-lines", type=_lines, default=_lines("4,5,6"), metavar="PERCENTS",
                   help="steadiness lines to split at, in percent (default: 4,5,6)")
    p.add_argument("--drift-lines", type=_lines, default=_lines("3,5,10"), metavar="PERCENTS",
                   help="profiling drift lines to split at, in percent (default: 3,5,10)")
    p.add_argument("--check-drift-lines", type=_lines, default=_lines("3,5,10"), metavar="PERCENTS",
                   help="lines to split the checks' own reference drift at, in percent (default: 3,5,10)")
    p.add_argument("--table", action="store_true", help="also print every check's row")
    p.add_argument("--json", metavar="FILE", help="also write every check and split to FILE")
    args = p.parse_args(argv)
    folders = args.folders or sorted(str(f) for f in REPO_ROOT.glob(DEFAULT_GLOB) if f.is_dir())
    if not folders:
        print(f"error: no campaign folders given and none match {REPO_ROOT / DEFAULT_GLOB}", file=sys.stderr)
        return 2
    try:
        checks = [c for folder in folders for c in read_campaign(folder)]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    met = sum(c.met for c in checks)
    steps = [c for c in checks if math.isfinite(c.max_abs_err_step_speed)]
    print(f"{len(checks)} checks in {len(folders)} campaigns; {met} met the {TARGET:.0%} target raw"
          + (f"; at their own steps' speed {sum(c.max_abs_err_step_speed <= TARGET for c in steps)} of "
             f"{len(steps)}" if steps else ""))
    splits = [split(checks, "wander", x) for x in args.wander_lines] + \
             [split(checks, "drift", x) for x in args.drift_lines] + \
             [split(checks, "check drift", x) for x in args.check_drift_lines]
    for s in splits:
        print(s.sentence())
    if args.table:
        print(table(checks))
    if args.json:
        doc = {"target": TARGET, "checks": [asdict(c) for c in checks], "splits": [asdict(s) for s in splits]}
        Path(args.json).write_text(json.dumps(json_safe(doc), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
