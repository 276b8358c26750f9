"""Should the step model price the typical engine step or the average one?

``calibrate.step_fit`` fits the step coefficients with a robust loss on relative
errors, so the model prices the *typical* step of each composition: the profiled
steps' median real/model ratio is 1.00. Latency is a sum of steps, and the
simulator's steps average the model (its jitter has mean 1), so where real steps
have a right tail (stalls, a slow stretch) their total runs over the model's by
the ``sum_ratio`` (``calibrate.step_fit.level_ratios``). This fits a profiling
whose token times were kept at both levels (``calibrate fit --step-level median``
and ``mean``) and replays checks of the same campaign under each, so that both
verdicts stand side by side with every statistic's signed error.

    python benchmarks/step_level_mean_vs_median.py \
        --profiling tests/data/cpu-tiny-2026-12-05c-profiling.csv \
        tests/data/checks-2026-12-05c/tiny-check-1 tests/data/checks-2026-12-05c/tiny-check-2

Each CHECK is a check's folder (its ``check_requests.csv`` is replayed, as
``calibrate check --replay`` does; its recorded ``check.json``'s verdict, under the
campaign's own fit, is shown beside). Offline and CPU-bound: about a minute per
profiling on a 2-core VM. docs/calibration.md (section 4, item 9) has the results.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from calibrate.check import compare, max_unit_error, read_measured, replay_check  # noqa: E402
from calibrate.fit import FitError, fit_profile  # noqa: E402
from calibrate.step_fit import STEP_LEVELS  # noqa: E402

LOADS = ("poisson-50", "poisson-80", "burst")


def replayed(profile, check_dir: Path) -> dict:
    return compare(replay_check(profile, read_measured(check_dir / "check_requests.csv")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiling", type=Path, required=True,
                        help="a profiling CSV whose .token_times.jsonl and .meta.json lie beside it")
    parser.add_argument("checks", nargs="*", type=Path, help="check folders of the same campaign to replay")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    for check in args.checks:
        if not (check / "check_requests.csv").is_file():
            parser.error(f"{check} holds no check_requests.csv (a check's folder)")
    try:
        profiles = {level: fit_profile(args.profiling, f"step-level-{level}", step_level=level)[0]
                    for level in STEP_LEVELS}
    except FitError as e:
        parser.error(str(e))
    steps = profiles["median"].fit.get("stages", {}).get("steps")
    if steps is None:
        raise SystemExit(f"{args.profiling}: the fit used no timed steps (profiled before 2026-12-05?)")
    print(f"{args.profiling.name}: {steps['steps']} timed steps; median real/model {steps['median_ratio']:.3f}, "
          f"their total over the model's {steps['sum_ratio']:.3f}")
    out = {"profiling": str(args.profiling), "median_ratio": steps["median_ratio"],
           "sum_ratio": steps["sum_ratio"], "checks": {}}
    for check in args.checks:
        recorded = json.loads((check / "check.json").read_text())["max_abs_err"] \
            if (check / "check.json").is_file() else math.nan
        both = {level: replayed(p, check) for level, p in profiles.items()}
        out["checks"][str(check)] = both
        print(f"  {check}: recorded {recorded * 100:.1f}%; refitted at the median "
              f"{max_unit_error(both['median']) * 100:.1f}%, at the mean {max_unit_error(both['mean']) * 100:.1f}%")
        for load in LOADS:
            if load in both["median"]:
                signed = [f"{stat} {both['median'][load][stat]['err'] * 100:+.1f}->"
                          f"{both['mean'][load][stat]['err'] * 100:+.1f}"
                          for stat in both["median"][load] if isinstance(both["median"][load][stat], dict)]
                print(f"    {load:10s} " + ", ".join(signed))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
