"""How well derived profiles predict measured GPU step times they were not fitted on.

    python benchmarks/derived_profile_accuracy.py [--csv tests/data/splitwise_perf_model.csv]

Splitwise's measurements (Patel et al., ISCA 2024; MIT; tests/data/splitwise_perf_model.csv)
time prefill and decode steps of Llama-2-70B on A100 and H100 (tensor parallel 2/4/8,
and a power-capped H100) and of BLOOM-176B (TP8). The efficiency factors of
``sim.profiles`` are fitted on one slice and the derived step times scored on the
others, per held-out slice, as median and p90 absolute relative error (and the
prefill median over steps of at most 2,048 tokens, vLLM's default token budget per
step on A100-class GPUs):

1. fit on Llama-2-70B on H100 (TP 2/4/8): predict A100, the power-capped H100, BLOOM-176B;
2. fit on TP 4 (A100 and H100): predict TP 2 and TP 8, BLOOM-176B;
3. the shipped factor set (fit on every Llama-2-70B A100/H100 row): BLOOM-176B and the
   power-capped H100, which it never saw.

Also printed: the sensitivity of experiment 1 to the one fixed factor
(``hbm_efficiency``), and the in-sample error of the shipped *fitted* profiles for
comparison. Deterministic: no timing, no randomness.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import pandas as pd

from sim.latency import load_profile
from sim.profiles.factors import load_factor_set
from sim.profiles.fit import START, error_table, fit_factors, splitwise_steps

REPO = Path(__file__).resolve().parents[1]
TARGET = 0.10


def slices(steps: pd.DataFrame) -> pd.DataFrame:
    short = {"llama-2-70b": "Llama-2-70B", "bloom-176b": "BLOOM-176B"}
    hw = {"a100-80gb": "A100", "h100-80gb": "H100", "h100-80gb-pcap": "H100 power-capped"}
    return steps.assign(slice=steps["model"].map(short) + " " + steps["hardware"].map(hw) + " TP"
                        + steps["tp"].astype(str))


def experiments(steps: pd.DataFrame) -> list[tuple[str, pd.Series, pd.Series]]:
    llama = steps["model"] == "llama-2-70b"
    unpowered = steps["hardware"] != "h100-80gb-pcap"
    bloom = steps["model"] == "bloom-176b"
    return [
        ("fit on Llama-2-70B H100 (TP 2/4/8)", llama & (steps["hardware"] == "h100-80gb"),
         (llama & (steps["hardware"] != "h100-80gb")) | bloom),
        ("fit on TP 4 (Llama-2-70B, A100 and H100)", llama & unpowered & (steps["tp"] == 4),
         (llama & unpowered & (steps["tp"] != 4)) | bloom),
    ]


SMALL_STEP = 2048


def scored(steps: pd.DataFrame, factors) -> pd.DataFrame:
    """error_table plus the prefill median over steps of at most SMALL_STEP tokens."""
    table = error_table(steps, factors)
    small = steps[(steps["kind"] == "prefill") & (steps["num_tokens"] <= SMALL_STEP)]
    part = error_table(small, factors)[["slice", "prefill_median"]].rename(columns={"prefill_median": "small"})
    return table.merge(part, on="slice", how="left")


def markdown(table: pd.DataFrame) -> str:
    lines = ["| held-out slice | steps | prefill median | prefill p90 | prefill median, steps <= 2,048 tokens "
             "| decode median | decode p90 |", "|---|---|---|---|---|---|---|"]
    for r in table.itertuples(index=False):
        def cell(v):
            return f"**{v:.1%}**" if v > TARGET else f"{v:.1%}"
        lines.append(f"| {r.slice} | {r.rows} | {cell(r.prefill_median)} | {r.prefill_p90:.1%} | {cell(r.small)} | "
                     f"{cell(r.decode_median)} | {r.decode_p90:.1%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", default=str(REPO / "tests" / "data" / "splitwise_perf_model.csv"))
    args = parser.parse_args(argv)
    steps = slices(splitwise_steps(args.csv))
    print(f"{len(steps)} measured steps (medians of repeats; broken rows dropped). Medians above "
          f"{TARGET:.0%} in bold.\n")
    for title, train, test in experiments(steps):
        factors, diag = fit_factors(steps[train])
        print(f"### {title}: {int(train.sum())} steps\n")
        print("factors: " + ", ".join(f"{k} {v:.4g}" for k, v in vars(factors).items()) + "\n")
        inside = error_table(steps[train], factors)
        print(f"in-sample: prefill median {inside['prefill_median'].median():.1%}, decode median "
              f"{inside['decode_median'].median():.1%}\n")
        print(markdown(scored(steps[test], factors)) + "\n")

    shipped = load_factor_set()
    never_seen = (steps["model"] == "bloom-176b") | (steps["hardware"] == "h100-80gb-pcap")
    print(f"### shipped factor set `{shipped.name}` ({shipped.description}) on what it never saw\n")
    print(markdown(scored(steps[never_seen], shipped.factors)) + "\n")

    print("### sensitivity of experiment 1 to the fixed hbm_efficiency (median over held-out slices)\n")
    print("| hbm_efficiency | prefill median | decode median |\n|---|---|---|")
    title, train, test = experiments(steps)[0]
    for eff in (0.8, 0.9, 1.0):
        factors, _ = fit_factors(steps[train], start=replace(START, hbm_efficiency=eff))
        t = error_table(steps[test], factors)
        print(f"| {eff} | {t['prefill_median'].median():.1%} | {t['decode_median'].median():.1%} |")

    print("\n### for comparison: the shipped fitted profiles, in-sample (5 coefficients per slice)\n")
    print("| fitted profile | prefill median | decode median |\n|---|---|---|")
    for hw in ("a100", "h100"):
        for tp in (2, 4, 8):
            p = load_profile(f"{hw}-llama2-70b-tp{tp}")
            e = p.fit["median_abs_rel_error"]
            print(f"| {p.name} | {e['prefill']:.1%} | {e['decode']:.1%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
