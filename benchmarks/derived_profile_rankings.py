"""Do derived and fitted profiles rank routing strategies the same way on the shipped scenarios?

    python benchmarks/derived_profile_rankings.py                       # every scenario as shipped
    python benchmarks/derived_profile_rankings.py --seeds 0 --requests 800 --scenarios burst,poisson

Each shipped scenario whose fleet uses the Llama-2-70B profiles fitted to Splitwise
(``{a100,h100}-llama2-70b-tpN``) is simulated twice with ``python -m sim``: as shipped,
and with every group's profile replaced by the profile derived for the same model, GPU
and tensor parallelism (``python -m sim.profiles derive --model llama-2-70b --gpu
h100-sxm --tp N``, written under the output folder and passed with ``--set
cluster.groups.<group>.profile=<path>``). ``results.compare`` then gives Kendall tau-b
and top-1 agreement of the two rankings at every grid point.

The runs go under ``--out`` (default ``runs/derived-rankings``); both runs of a
scenario share seeds, requests and grid points, so only the profiles differ. For
scale, the fitted profiles are also run with other seeds (each seed + 1000): the
agreement between those two fitted runs is how much rankings move by chance alone.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from results.compare import compare
from results.summary import summarize_run
from scenarios import load_scenario
from scenarios.library import scenario_path
from sim.profiles import derive_profile

REPO = Path(__file__).resolve().parents[1]
FITTED = re.compile(r"^(a100|h100)-llama2-70b-tp(\d+)$")
GPUS = {"a100": "a100-sxm", "h100": "h100-sxm"}
#: wildchat-replay is left out by default: it needs the WildChat dataset from the HuggingFace hub.
SCENARIOS = ("burst", "poisson", "heterogeneous", "constant", "azure-replay")


def run_sim(scenario: Path, out: Path, overrides: list[str], args, seeds: list[int]) -> None:
    cmd = [sys.executable, "-m", "sim", str(scenario), "--out", str(out), "--quiet",
           "--workers", str(args.workers), "--seeds", ",".join(map(str, seeds))]
    if args.requests:
        cmd += ["--set", f"num_requests={args.requests}"]
    for o in overrides:
        cmd += ["--set", o]
    if (out / "summary.json").exists():
        return
    print("  $ " + " ".join(cmd), flush=True)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run(cmd, check=True, env=env, cwd=REPO)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated shipped scenario names")
    p.add_argument("--seeds", default="", help="seeds replacing the scenarios' (e.g. 0); default: as shipped")
    p.add_argument("--requests", type=int, default=0, help="num_requests override (0: as shipped)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--out", default=str(REPO / "runs" / "derived-rankings"))
    args = p.parse_args(argv)
    out = Path(args.out)
    (out / "profiles").mkdir(parents=True, exist_ok=True)
    rows = []
    for name in [s.strip() for s in args.scenarios.split(",") if s.strip()]:
        path = scenario_path(name)
        sc = load_scenario(path)
        overrides = []
        for g in sc.cluster.groups:
            m = FITTED.match(str(g.profile))
            if not m:
                continue
            prof = derive_profile("llama-2-70b", GPUS[m.group(1)], int(m.group(2)))
            file = prof.save(out / "profiles" / f"{prof.name}.json")
            overrides.append(f'cluster.groups.{g.name}.profile="{file}"')
        if not overrides:
            print(f"{name}: no fitted Llama-2-70B profile to replace; skipped")
            continue
        print(f"{name}:", flush=True)
        seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else list(sc.seeds)
        try:
            run_sim(path, out / name / "fitted", [], args, seeds)
            run_sim(path, out / name / "derived", overrides, args, seeds)
            run_sim(path, out / name / "fitted-reseeded", [], args, [x + 1000 for x in seeds])
        except subprocess.CalledProcessError:
            print(f"{name}: python -m sim failed (see its error above); skipped")
            continue
        a = summarize_run(out / name / "fitted", progress=False, write=False)
        b = summarize_run(out / name / "derived", progress=False, write=False)
        c = summarize_run(out / name / "fitted-reseeded", progress=False, write=False)
        chance = {r.point_id: r for r in compare(a, c).agreement.itertuples(index=False)}
        for r in compare(a, b).agreement.itertuples(index=False):
            rows.append({"scenario": name, "point": r.point_id, "objective": r.objective, "n": int(r.n),
                         "tau_b": r.tau, "top1": bool(r.top1), "best_fitted": r.best_a, "best_derived": r.best_b,
                         "tau_b_reseeded": chance[r.point_id].tau, "top1_reseeded": bool(chance[r.point_id].top1)})
    print("\n| scenario | grid point | strategies | tau-b fitted vs derived | same best | best (fitted) | "
          "best (derived) | tau-b fitted vs fitted, other seeds |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['scenario']} | {r['point']} | {r['n']} | {r['tau_b']:.2f} | {'yes' if r['top1'] else 'no'} | "
              f"{r['best_fitted']} | {r['best_derived']} | {r['tau_b_reseeded']:.2f} |")
    for key, label in (("tau_b", "fitted vs derived"), ("tau_b_reseeded", "fitted vs fitted (other seeds)")):
        taus = sorted(r[key] for r in rows if r[key] == r[key])
        if taus:
            top = "top1" if key == "tau_b" else "top1_reseeded"
            print(f"{label}: median tau-b {taus[len(taus) // 2]:.2f} over {len(taus)} grid points, same best "
                  f"strategy at {sum(r[top] for r in rows)} of {len(rows)}")
    print(f"load average {os.getloadavg()}")
    (out / "agreement.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
