"""``python -m validation`` (and ``python -m live --validate``): the verdict rules, scaling, and the pipeline end to end on emulators.

Emulators run the simulator's own engine model, so with deterministic profiles
(no step jitter) the live side must reproduce the simulated ranking; a
simulator whose profiles are four times too slow must be reported as off.
The ``--spawn-vllm`` path is exercised with a stand-in for vLLM (an emulator
started through the real ``calibrate.serve``), interrupted mid-run: every
server it started must be gone. ``-m vllm`` runs it against real vLLM-CPU.
"""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import routing
from live.emulator.spawn import EmulatorSpec, spawn_specs
from live.loadgen import LoadOptions
from validation.judge import (
    AGREE_TAU, CLOSE_ERROR, ROUGH_ERROR, judge, metrics_verdict, overall_ranking_verdict,
    point_verdict, tied_ranks,
)
from validation.pipeline import (
    PointPlan, Target, ValidateOptions, ValidationError, choose_points, load_sim_run, plan_point,
    validate,
)
from results.rundir import RunDir
from results.stats import aggregate, rank_strategies
from results.summary import RunSummary
from sim.cli import main as sim_main
from sim.latency import LatencyModel, load_profile
from process_helpers import pid_alive, still_alive_after

pytestmark = pytest.mark.timeout(240)
ROOT = Path(__file__).resolve().parents[2]

SCENARIO = """\
name = "validate-test"
seeds = [0]
num_requests = 300

[workload]
source = "synthetic"
block_size = 32
[workload.synthetic]
input = {{dist = "uniform", min = 32, max = 400}}
output = {{dist = "uniform", min = 8, max = 16}}
num_requests = 300

[arrivals]
pattern = "poisson"
rate = [{rates}]

[[cluster.groups]]
name = "fast"
count = 1
profile = "{fast}"
block_size = 32

[[cluster.groups]]
name = "slow"
count = 1
profile = "{slow}"
block_size = 32

[router]
strategies = ["round_robin", "least_load"]
scrape_interval_s = 0.1

[slo]
ttft_ms = 300
"""


def profile_file(folder: Path, base: str, name: str, scale: float) -> str:
    """A copy of a shipped profile, ``scale`` times slower, without jitter or front-end overhead."""
    prof = load_profile(base)
    model = LatencyModel(**{k: v * scale for k, v in asdict(prof.model).items()})
    return str(replace(prof, name=name, model=model, jitter_cv=0.0, request_overhead_s=0.0)
               .save(folder / f"{name}.json"))


def sim_run(folder: Path, fast: str, slow: str, rates: str = "2.0, 4.0") -> Path:
    scenario = folder / "validate-test.toml"
    scenario.write_text(SCENARIO.format(fast=fast, slow=slow, rates=rates))
    out = folder / "sim-run"
    assert sim_main([str(scenario), "--out", str(out), "--workers", "1", "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def true_profiles(tmp_path_factory):
    """The 'real' fleet: a fast and a slow backend, deterministic."""
    folder = tmp_path_factory.mktemp("profiles")
    return (profile_file(folder, "cpu-tiny", "fast-true", 0.5),
            profile_file(folder, "cpu-small", "slow-true", 2.0))


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory, true_profiles):
    """A sim run whose profiles are the fleet's own."""
    return sim_run(tmp_path_factory.mktemp("calibrated"), *true_profiles)


def options(run: Path, target: Target, out: Path, **kw) -> ValidateOptions:
    return ValidateOptions(sim_run=run, target=target, out=out, budget_s=24.0, report=False,
                           progress=False, load=LoadOptions(timeout_s=60.0), **kw)


# --- the verdict rules ------------------------------------------------------------------------
def test_point_verdict_thresholds():
    assert point_verdict(1.0, True) == "agree"
    assert point_verdict(AGREE_TAU, True) == "agree"
    assert point_verdict(AGREE_TAU - 0.01, True) == "partial"
    assert point_verdict(0.5, False) == "partial"
    assert point_verdict(0.0, False) == "disagree"
    assert point_verdict(-1.0, False) == "disagree"
    assert point_verdict(math.nan, True) == "partial"  # all tied on one side: nothing to confirm
    assert overall_ranking_verdict(["agree", "agree"]) == "agree"
    assert overall_ranking_verdict(["agree", "disagree"]) == "partial"
    assert overall_ranking_verdict(["disagree"]) == "disagree"
    assert overall_ranking_verdict([]) == "undecided"
    assert metrics_verdict(CLOSE_ERROR) == "close"
    assert metrics_verdict(ROUGH_ERROR) == "rough"
    assert metrics_verdict(ROUGH_ERROR + 0.01) == "off"
    assert metrics_verdict(math.nan) == "undecided"


STRATEGIES = ["round_robin", "least_load", "least_kv", "random"]
METRIC_COLUMNS = ["median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "p99_tpot_ms", "median_e2el_ms",
                  "request_throughput", "request_goodput", "slo_attainment"]


def summary(values: dict[str, dict[str, float]], point: str = "p", failed: int = 0) -> RunSummary:
    """A one-seed summary from metric values per strategy (100 requests each, ``failed`` not ok)."""
    units = pd.DataFrame([{"point_id": point, "strategy": s, "seed": 0, "num_requests": 100,
                           "failed": failed, **m} for s, m in values.items()])
    agg = aggregate(units, METRIC_COLUMNS)
    return RunSummary({"points": [{"point_id": point}]}, units, pd.DataFrame(), agg,
                      rank_strategies(agg, "request_goodput"))


def metric_values(rng: np.random.Generator, n: int) -> dict[str, dict[str, float]]:
    return {s: {m: float(rng.uniform(0.5, 100.0)) for m in METRIC_COLUMNS} for s in STRATEGIES[:n]}


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 4), factor=st.floats(0.2, 5.0))
def test_identical_rankings_give_tau_one(seed, n, factor):
    # Live metrics that are the simulated ones times a common factor keep the order
    # of every metric: tau-b is 1, the best is the same, and every error is 1/factor - 1.
    sim_values = metric_values(np.random.default_rng(seed), n)
    live_values = {s: {m: v * factor for m, v in ms.items()} for s, ms in sim_values.items()}
    doc = judge(summary(sim_values), summary(live_values), "request_goodput")
    (r,) = doc["rankings"]
    assert r["tau"] == pytest.approx(1.0) and r["top1"] and r["verdict"] == "agree"
    assert r["n"] == n
    errors = [m["error"] for m in doc["metrics"]]
    assert errors and np.allclose(errors, 1.0 / factor - 1.0)
    assert doc["verdict"]["ranking"] == "agree"
    worst = doc["verdict"]["worst_median_abs_error"]
    assert worst == pytest.approx(abs(1.0 / factor - 1.0))
    assert doc["verdict"]["metrics"] == metrics_verdict(worst)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 4))
def test_reversed_rankings_give_tau_minus_one(seed, n):
    sim_values = metric_values(np.random.default_rng(seed), n)
    order = sorted(sim_values, key=lambda s: sim_values[s]["request_goodput"])
    live_values = {s: dict(sim_values[s]) for s in order}
    goodputs = sorted(v["request_goodput"] for v in sim_values.values())
    for s, g in zip(order, reversed(goodputs)):  # the worst gets the best goodput, and so on
        live_values[s]["request_goodput"] = g
    doc = judge(summary(sim_values), summary(live_values), "request_goodput")
    (r,) = doc["rankings"]
    assert r["tau"] == pytest.approx(-1.0) and not r["top1"] and r["verdict"] == "disagree"
    assert doc["verdict"]["ranking"] == "disagree"


def test_ties_are_kept_so_all_tied_live_results_do_not_confirm_a_ranking():
    sim_values = {s: {m: 10.0 + i for m in METRIC_COLUMNS} for i, s in enumerate(STRATEGIES[:3])}
    live_values = {s: {m: 10.0 for m in METRIC_COLUMNS} for s in STRATEGIES[:3]}
    live = summary(live_values)
    assert set(tied_ranks(live, "p", "request_goodput").values()) == {1.0}
    doc = judge(summary(sim_values), live, "request_goodput")
    (r,) = doc["rankings"]
    assert math.isnan(r["tau"]) and r["verdict"] != "agree"
    assert r["live"].count("=") == 2


def test_a_point_whose_live_requests_failed_is_not_judged_on_its_ranking():
    values = metric_values(np.random.default_rng(7), 3)
    sim = summary(values, failed=5)
    doc = judge(sim, summary(values, failed=5 + 21), "request_goodput")
    assert doc["rankings"][0]["verdict"] == "failed" and doc["verdict"]["ranking"] == "failed"
    assert doc["rankings"][0]["failed_share"] == {"sim": 0.05, "live": 0.26}
    assert "live side failed" in doc["verdict"]["text"] and "26% not ok" in doc["verdict"]["text"]
    # as many failures as simulated (an overloaded point) is judged as usual
    assert judge(sim, summary(values, failed=5 + 20), "request_goodput")["verdict"]["ranking"] == "agree"
    assert overall_ranking_verdict(["failed", "agree"]) == "agree"
    assert overall_ranking_verdict(["failed", "disagree", "agree"]) == "partial"


def seeded_summary(goodput: dict[int, dict[str, float]], hits: dict[str, float]) -> RunSummary:
    """Several seeds of one point: goodput per seed and strategy, a prefix-hit rate per strategy."""
    rows = []
    for seed, per in goodput.items():
        for s, g in per.items():
            m = {c: 1.0 for c in METRIC_COLUMNS}
            m["request_goodput"] = g
            rows.append({"point_id": "p", "strategy": s, "seed": seed, "num_requests": 100,
                         "failed": 0, "prefix_hit_rate": hits[s], **m})
    units = pd.DataFrame(rows)
    agg = aggregate(units, METRIC_COLUMNS)
    return RunSummary({"points": [{"point_id": "p"}]}, units, pd.DataFrame(), agg,
                      rank_strategies(agg, "request_goodput"))


def test_rankings_seed_by_seed_with_their_spread_and_hit_rates():
    # Worked by hand. Seed 0: sim a > b > c, live a > b > c (tau +1, top-1 same).
    # Seed 1: sim a > b > c, live c > b > a (tau -1, top-1 differs).
    # Seed 2: sim a > b > c, live b > a > c (one discordant pair of three: tau +1/3, differs).
    sim = seeded_summary({0: {"a": 3, "b": 2, "c": 1}, 1: {"a": 3, "b": 2, "c": 1},
                          2: {"a": 3, "b": 2, "c": 1}}, {"a": 0.5, "b": 0.25, "c": 0.0})
    live = seeded_summary({0: {"a": 9, "b": 5, "c": 4}, 1: {"a": 1, "b": 2, "c": 3},
                           2: {"a": 5, "b": 6, "c": 1}}, {"a": 0.4, "b": 0.3, "c": 0.0})
    doc = judge(sim, live, "request_goodput")
    (p,) = doc["per_seed"]
    assert [x["seed"] for x in p["seeds"]] == [0, 1, 2]
    assert [x["tau"] for x in p["seeds"]] == pytest.approx([1.0, -1.0, 1 / 3])
    assert [x["top1"] for x in p["seeds"]] == [True, False, False]
    assert p["seeds"][1]["live"] == "c > b > a"
    assert p["tau_mean"] == pytest.approx(1 / 9) and p["tau_min"] == -1.0 and p["tau_max"] == 1.0
    assert p["top1_share"] == pytest.approx(1 / 3)
    hits = {h["strategy"]: h for h in doc["hit_rates"]}
    assert hits["a"]["sim"] == pytest.approx(0.5) and hits["a"]["live"] == pytest.approx(0.4)
    assert hits["a"]["diff"] == pytest.approx(0.1) and hits["c"]["diff"] == 0.0
    from validation.report import _spread
    assert _spread(p) == ("tau-b over 3 seeds: mean +0.11, range -1.00..+1.00, sd 1.02; "
                          "top-1 the same at 33% of seeds")


# --- choosing points and scaling ------------------------------------------------------------------
def test_points_are_chosen_by_their_best_strategy(calibrated_run):
    sim = load_sim_run(calibrated_run)
    ranking = pd.DataFrame(json.loads((calibrated_run / "summary.json").read_text())["ranking"])
    best = ranking[ranking["rank"] == 1].set_index("point_id")["mean"]
    chosen = choose_points(sim.points, ranking, "request_goodput", top=2)
    values = [why["value"] for _, why in chosen]
    assert values == sorted(best.to_numpy(), reverse=True)
    assert [p.point_id for p, _ in chosen] == list(best.sort_values(ascending=False).index)
    (only, why), = choose_points(sim.points, ranking, "request_goodput", top=1)
    assert why["value"] == best.max()
    # a lower-is-better objective picks the smallest best value
    low = ranking.assign(mean=-ranking["mean"], objective="median_ttft_ms")
    (p, _), = choose_points(sim.points, low, "median_ttft_ms", top=1)
    assert p.point_id == (-best).idxmin()
    with pytest.raises(ValidationError, match="unknown point id.*nope.*" + sim.points[0].point_id):
        choose_points(sim.points, ranking, "request_goodput", top=1, wanted=["nope"])


@pytest.mark.parametrize("budget", [6.0, 15.0, 1e6])
def test_scaled_units_are_trace_prefixes_that_fit_the_budget(calibrated_run, budget):
    sim = load_sim_run(calibrated_run)
    point = sim.points[-1]
    plan: PointPlan = plan_point(point, [0, 1], sim.scenario.router.strategies, budget, "x")
    assert plan.predicted_s <= budget
    for seed, trace in plan.traces.items():
        assert 0 < len(trace) <= plan.full_sizes[seed]
        assert (trace.arrival_s <= plan.cut_s).all()
        # a prefix of the full trace: the same requests, in order
        for label in ("round_robin", "least_load"):
            records = plan.records[(label, seed)]
            assert [r.request_id for r in records] == trace.request_id.tolist()
            assert max(r.finish_s for r in records) <= budget
    if budget == 1e6:
        assert all(len(t) == plan.full_sizes[s] for s, t in plan.traces.items())
    else:
        assert plan.live_bound_s >= plan.predicted_s
        assert any(len(t) < plan.full_sizes[s] for s, t in plan.traces.items())


def _sim_helpers():
    """tests/sim/sim_helpers.py (its chat traces), loaded by path from this folder."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("sim_helpers", ROOT / "tests" / "sim" / "sim_helpers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_simulated_side_counts_no_reply_hit_a_live_replay_cannot_have(calibrated_run, monkeypatch):
    # Live, the load generator sends each later turn the trace's tokens, not what the
    # backend generated, so a later turn can hit at most the blocks its predecessor's
    # *prompt* filled. The simulated side must predict that, not a chat client's hits.
    import validation.pipeline as pipeline
    from sim.cluster import simulate
    from sim.fleet import cluster_config

    chat = _sim_helpers().chat_trace(12, seed=4, rate=0.05, bs=32, max_out=120)
    monkeypatch.setattr(pipeline, "build_trace", lambda *a, **k: chat)
    sim = load_sim_run(calibrated_run)
    point = sim.points[0]
    plan = plan_point(point, [0], sim.scenario.router.strategies, 1e6, "x")
    rows, _ = chat.reply_blocks()
    later_turns = 0
    for label in ("round_robin", "least_load"):
        records = plan.records[(label, 0)]
        for i, rec in enumerate(records):
            if rows[i] >= 0:
                later_turns += 1
                assert records[rows[i]].cached_tokens <= rec.input_len // 32 * 32
    assert later_turns > 5
    # Guard: a simulation that does cache served replies breaks that bound on this trace.
    replied = simulate(chat, routing.build("least_load"), cluster_config(point.scenario))
    assert any(replied.records[rows[i]].cached_tokens > rec.input_len // 32 * 32
               for i, rec in enumerate(replied.records) if rows[i] >= 0)


# --- end to end on emulators -----------------------------------------------------------------------
@pytest.mark.slow
def test_pipeline_on_emulators_reproduces_the_simulated_ranking(calibrated_run, tmp_path):
    out = tmp_path / "live"
    said: list[str] = []
    doc = validate(options(calibrated_run, Target(emulate=2), out), say=said.append)
    assert doc["failed_units"] == []
    (point,) = doc["points"]
    assert point["chosen_because"]["best_strategy"] == "least_load"
    assert sum(point["requests"].values()) >= 10
    (r,) = doc["rankings"]
    assert r["tau"] == 1.0 and r["top1"] and r["verdict"] == "agree"
    assert doc["verdict"]["ranking"] == "agree"
    # The emulator steps the simulator's engine: only HTTP and timer noise separate them.
    medians = {e["metric"]: e["median_abs_error"] for e in doc["metric_errors"]}
    assert medians["median_e2el_ms"] < 0.10 and medians["request_throughput"] < 0.10
    assert doc["verdict"]["metrics"] in ("close", "rough")
    # what was written
    assert json.loads((out / "validation.json").read_text())["verdict"] == doc["verdict"]
    live_manifest = RunDir.open(out).manifest
    assert live_manifest["mode"] == "live" and live_manifest["validation"]["sim_run"] == str(calibrated_run)
    assert RunDir.open(out / "resimulated").manifest["mode"] == "sim"
    assert len(RunDir.open(out).record_files()) == len(RunDir.open(out / "resimulated").record_files()) == 2
    section = (calibrated_run / "validation" / f"{out.name}.html").read_text()
    assert "rankings agree" in section and "least_load" in section
    assert (out / "validation" / "against_simulator.html").exists()
    text = "\n".join(said)
    assert "scaled from 300" in text and "tau-b +1.00" in text and "SLO attainment" in text


@pytest.mark.slow
def test_a_miscalibrated_simulator_is_caught(tmp_path, true_profiles):
    # The simulator believes every backend is 4x slower than the fleet really is.
    folder = tmp_path / "wrong"
    folder.mkdir()
    wrong = (profile_file(folder, "cpu-tiny", "fast-wrong", 0.5 * 4),
             profile_file(folder, "cpu-small", "slow-wrong", 2.0 * 4))
    run = sim_run(folder, *wrong)
    specs = [EmulatorSpec(p, ("--block-size", "32")) for p in true_profiles]
    with spawn_specs(specs) as children:
        urls = [c.url for c in children]
        doc = validate(options(run, Target(backends=urls), tmp_path / "live"), say=lambda _: None)
    assert doc["failed_units"] == []
    errors = {e["metric"]: e for e in doc["metric_errors"]}
    # simulated latencies several times the live ones: errors far above +100%
    assert errors["median_tpot_ms"]["median_abs_error"] > 1.0
    assert errors["median_e2el_ms"]["median_abs_error"] > 1.0
    tpot = [m["error"] for m in doc["metrics"] if m["metric"] == "median_tpot_ms"]
    assert min(tpot) > 1.0
    assert doc["verdict"]["metrics"] == "off" and "off" in doc["verdict"]["text"]
    # the given servers do not serve the profiles the run simulated: said so
    assert any("fast-true" in c["message"] for c in doc["checks"])


# --- the command line ------------------------------------------------------------------------------
def validation_cli(args, cwd, timeout=120, env=None):
    return subprocess.run([sys.executable, "-m", "validation", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


def live_cli(args, cwd, timeout=120, env=None):
    return subprocess.run([sys.executable, "-m", "live", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


@pytest.mark.slow
def test_user_errors_name_the_problem(tmp_path, calibrated_run):
    missing = validation_cli([str(tmp_path / "nope"), "--emulate", "2"], tmp_path)
    assert missing.returncode == 2 and "nope" in missing.stderr
    neither = validation_cli([str(calibrated_run)], tmp_path)
    assert neither.returncode == 2 and "--spawn-vllm" in neither.stderr
    wrong_size = validation_cli([str(calibrated_run), "--emulate", "3"], tmp_path)
    assert wrong_size.returncode == 2 and "2 backends" in wrong_size.stderr
    both = validation_cli([str(calibrated_run), "x.toml", "--emulate", "2"], tmp_path)
    assert both.returncode == 2 and "scenario" in both.stderr and "x.toml" in both.stderr
    resume = validation_cli([str(calibrated_run), "--emulate", "2", "--resume"], tmp_path)
    assert resume.returncode == 2 and "--resume" in resume.stderr
    serve = validation_cli([str(calibrated_run), "--emulate", "2", "--serve-args", "--nice -5"], tmp_path)
    assert serve.returncode == 2 and "--spawn-vllm" in serve.stderr


def test_bad_serve_args_are_refused_before_anything_starts(tmp_path):
    run = sim_run(tmp_path, "cpu-tiny", "cpu-tiny", rates="1.0")
    proc = validation_cli([str(run), "--spawn-vllm", "2", "--serve-args", "--colour blue",
                           "--out", str(tmp_path / "live")], tmp_path)
    assert proc.returncode == 2
    assert "--colour" in proc.stderr and "calibrate serve" in proc.stderr
    assert not (tmp_path / "live").exists()


@pytest.mark.slow
def test_live_validate_is_the_validation_command(tmp_path, calibrated_run):
    """``python -m live --validate SIM_RUN ARGS`` hands ARGS to ``python -m validation SIM_RUN``."""
    missing = live_cli(["--emulate", "2", f"--validate={tmp_path / 'nope'}"], tmp_path)
    assert missing.returncode == 2 and "nope" in missing.stderr
    wrong_size = live_cli(["--validate", str(calibrated_run), "--emulate", "3"], tmp_path)
    assert wrong_size.returncode == 2 and "2 backends" in wrong_size.stderr
    alone = live_cli(["--spawn-vllm", "2", "scenarios/poisson.toml"], tmp_path)
    assert alone.returncode == 2 and "python -m validation" in alone.stderr


@pytest.mark.slow
def test_dead_backends_fail_the_validation_and_every_request_is_recorded(tmp_path, calibrated_run):
    ports = []
    for _ in range(2):  # loopback ports nothing listens on: connections are refused
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    out = tmp_path / "live"
    proc = validation_cli([str(calibrated_run), "--backends",
                           ",".join(f"http://127.0.0.1:{p}" for p in ports), "--budget-s", "24",
                           "--out", str(out), "--quiet", "--no-report"], tmp_path)
    assert proc.returncode == 1 and "backends up" in proc.stderr
    doc = json.loads((out / "validation.json").read_text())
    assert doc["verdict"]["ranking"] == "failed" and "live side failed" in proc.stdout
    (point,) = doc["points"]
    records = pd.concat(pd.read_parquet(f) for f in RunDir.open(out).record_files())
    assert len(records) == 2 * sum(point["requests"].values())  # two strategies, nothing dropped
    assert (records["status"] != "ok").all() and records["error"].str.len().gt(0).all()


@pytest.mark.slow
def test_spawn_vllm_refuses_a_run_vllm_cpu_cannot_serve(tmp_path):
    run = sim_run(tmp_path, "h100-llama2-70b-tp4", "h100-llama2-70b-tp4", rates="1.0")
    proc = validation_cli([str(run), "--spawn-vllm", "2"], tmp_path)
    assert proc.returncode == 2
    assert "h100-llama2-70b-tp4" in proc.stderr and "CPU profile" in proc.stderr


def test_help_explains_the_validation_options(tmp_path):
    text = validation_cli(["--help"], tmp_path).stdout
    for flag in ("SIM_RUN", "--top", "--points", "--budget-s", "--spawn-vllm", "--objective",
                 "--serve-args", "--no-report", "--emulate", "--backends"):
        assert flag in text
    assert "python -m validation" in live_cli(["--help"], tmp_path).stdout


# --- --spawn-vllm: servers started through `calibrate.serve` are always stopped ------------------
FAKE_VLLM = textwrap.dedent("""\
    #!{python}
    # Stands in for vLLM's Python: `calibrate.serve` runs it as `<this> -m vllm... --port P`.
    import os, sys
    port = sys.argv[sys.argv.index("--port") + 1]
    with open(os.path.join(os.environ["FAKE_VLLM_PIDS"], str(os.getpid())), "w"):
        pass
    os.execv(sys.executable, [sys.executable, "-m", "live.emulator", "--profile", "cpu-tiny",
                              "--block-size", "32", "--host", "127.0.0.1", "--port", port])
""")



@pytest.mark.slow
def test_spawned_servers_are_stopped_on_ctrl_c(tmp_path):
    run = sim_run(tmp_path, "cpu-tiny", "cpu-tiny", rates="1.0")
    fake = tmp_path / "fake-vllm-python"
    fake.write_text(FAKE_VLLM.format(python=sys.executable))
    fake.chmod(0o755)
    pids = tmp_path / "pids"
    pids.mkdir()
    out = tmp_path / "live"
    env = {**os.environ, "FAKE_VLLM_PIDS": str(pids)}
    serve = f"--vllm-python {fake} --model-root {tmp_path / 'models'} --log {tmp_path / 'vllm.log'}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "live", "--validate", str(run), "--spawn-vllm", "2", "--budget-s", "120",
         "--serve-args", serve, "--out", str(out), "--quiet", "--no-report"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:  # until vLLM (the stand-in) is up and the live units are running
            started = (out / "manifest.json").exists() and isinstance(
                json.loads((out / "manifest.json").read_text())["live"]["backends"], list)
            if started and len(list(pids.iterdir())) == 2:
                break
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the stand-in vLLM servers never came up"
            time.sleep(0.2)
        servers = [int(p.name) for p in pids.iterdir()]
        assert all(pid_alive(pid) for pid in servers)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, output
    assert "stopped" in output
    assert still_alive_after(servers) == []
    manifest = json.loads((out / "manifest.json").read_text())
    assert all(u.startswith("http://127.0.0.1:") for u in manifest["live"]["backends"])


# --- real vLLM-CPU (opt-in: pytest -m vllm tests/validation/test_validation.py) ----------------------
@pytest.mark.vllm
@pytest.mark.timeout(900)
def test_validate_against_two_real_vllm_cpu_instances(tmp_path):
    run = tmp_path / "sim"
    assert sim_main([str(ROOT / "docs" / "validation-cpu.toml"), "--out", str(run), "--workers", "1",
                     "--quiet"]) == 0
    said: list[str] = []
    doc = validate(ValidateOptions(sim_run=run, target=Target(spawn_vllm=2), out=tmp_path / "live",
                                   budget_s=180.0, report=False, progress=False), say=said.append)
    assert doc["failed_units"] == []
    assert doc["verdict"]["ranking"] in ("agree", "partial", "disagree")
    assert all(math.isfinite(m["live"]) for m in doc["metrics"] if m["metric"] == "median_ttft_ms")
