"""Build a run's report and open it in headless Chromium; print what happened as a table.

    python benchmarks/report_in_browser.py runs/<id>             # an existing run
    python benchmarks/report_in_browser.py --simulate out/demo   # a small real simulator run first
    python benchmarks/report_in_browser.py runs/<id> --screenshot docs/report.png

``--simulate`` runs the real simulator (``sim.cluster.simulate``: the vLLM engine
model on SimPy, the shipped H100 Llama-2-70B TP4 latency profile, real routing
strategies) on a synthetic-workload Poisson trace for a small grid, writes the
run directory, then checks its report. Exit status 1 if the browser saw a
console error, a chart failed, or a chart file is empty.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def simulate_run(path: Path, rates=(6.0, 12.0), strategies=("round_robin", "least_load", "power_of_two"),
                 seeds=(0, 1), n: int = 800, backends: int = 4) -> Path:
    """A small grid run by the real simulator, written as a run directory."""
    import routing
    from results.rundir import RunDir, Unit
    from sim.cluster import BackendConfig, ClusterConfig, RunLabels, simulate
    from sim.engine import EngineConfig
    from sim.latency import load_profile
    from workload.build import build_trace

    profile_name = "h100-llama2-70b-tp4"
    profile = load_profile(profile_name)
    d = profile.engine
    engine = EngineConfig(num_kv_blocks=d.num_kv_blocks, block_size=d.block_size,
                          max_num_seqs=d.max_num_seqs, max_num_batched_tokens=d.max_num_batched_tokens)
    names = [f"h100-{i}" for i in range(backends)]
    config = ClusterConfig([BackendConfig(b, "h100", profile, engine) for b in names])
    points = [{"point_id": f"p{i}", "label": f"rate={r:g}", "axes": {"arrivals.rate": r},
               "backends": [{"name": b, "group": "h100", "profile": profile_name} for b in names]}
              for i, r in enumerate(rates)]
    slo = {"ttft_ms": 2000, "tpot_ms": 100}
    scenario = (f'name = "report-demo"\nseeds = {list(seeds)}\nnum_requests = {n}\n'
                f'[workload]\nsource = "synthetic"\n[arrivals]\npattern = "poisson"\nrate = {list(rates)}\n'
                f'[[cluster.groups]]\nname = "h100"\ncount = {backends}\nprofile = "{profile_name}"\n'
                f"[router]\nstrategies = {list(strategies)}\n[slo]\nttft_ms = 2000\ntpot_ms = 100\n")
    manifest = {"experiment_id": path.name, "mode": "sim", "scenario": "report-demo",
                "scenario_path": None, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "seeds": list(seeds),
                "strategies": [{"label": s, "name": s, "params": {}} for s in strategies],
                "points": points, "slo": slo, "duration_s": None, "num_requests": n}
    run = RunDir.create(path, manifest, scenario, exist_ok=True)
    for p, rate in zip(points, rates):
        for seed in seeds:
            trace = build_trace({"source": "synthetic"}, {"pattern": "poisson", "rate": rate},
                                seed=seed, num_requests=n, cache_dir=False)
            for s in strategies:
                labels = RunLabels(path.name, p["point_id"], s, seed)
                result = simulate(trace, routing.build(s, seed=seed), config, labels=labels, seed=seed)
                run.write_unit(Unit(p["point_id"], s, seed), result.records)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="run directory (written first with --simulate)")
    parser.add_argument("--simulate", action="store_true",
                        help="first write a small run with the real simulator into RUN")
    parser.add_argument("--screenshot", type=Path, default=None,
                        help="also save a full-page PNG screenshot of the report here")
    parser.add_argument("--timeout", type=float, default=90.0,
                        help="seconds the browser check may take (default 90)")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from browser_driver import check_page, find_chromium  # a test helper, not shipped
    from results.report import build_report

    rows = []
    if args.simulate:
        t = time.perf_counter()
        simulate_run(args.run)
        rows.append(("simulate run", f"{time.perf_counter() - t:.2f} s"))
    t = time.perf_counter()
    report = build_report(args.run, progress=False)
    rows.append(("build report (metrics, charts, PNG/SVG)", f"{time.perf_counter() - t:.2f} s"))
    units = len(report.summary.units)
    rows.append(("units / requests", f"{units} / {int(report.summary.units['num_requests'].sum()):,}"))
    rows.append(("report.html size", f"{report.html_path.stat().st_size / 1e6:.2f} MB"))
    empty = [p.name for p in report.chart_files if p.stat().st_size == 0]
    rows.append(("chart files (empty)", f"{len(report.chart_files)} ({len(empty)})"))
    if find_chromium() is None:
        rows.append(("browser check", "skipped: no Chromium binary"))
        ok = not empty
    else:
        t = time.perf_counter()
        check = check_page(report.html_path, timeout_s=args.timeout, screenshot=args.screenshot)
        rows.append(("browser check (start, load, render)", f"{time.perf_counter() - t:.2f} s"))
        rows.append(("page load to last chart", f"{check.load_s:.2f} s"))
        rows.append(("charts rendered", f"{check.charts_rendered} / {check.charts_total}"))
        rows.append(("console errors", str(len(check.console_errors))))
        rows.append(("chart errors / empty charts", f"{len(check.chart_errors)} / {len(check.empty_charts)}"))
        if check.screenshot:
            rows.append(("screenshot", str(check.screenshot)))
        for e in check.console_errors + check.chart_errors:
            print("error:", e, file=sys.stderr)
        ok = check.ok and not empty
    width = max(len(k) for k, _ in rows)
    print(f"{'step'.ljust(width)}  result")
    print(f"{'-' * width}  {'-' * 20}")
    for k, v in rows:
        print(f"{k.ljust(width)}  {v}")
    print(f"\nverdict: {'OK' if ok else 'FAILED'}  ({report.html_path})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
