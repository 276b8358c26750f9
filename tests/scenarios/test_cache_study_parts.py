"""The cache-routing study's runner (benchmarks/cache_study.py) asks for the fleets,
loads and session modes docs/cache-routing.md describes: each part's overrides go
through the scenario checks and give the stated backends, rates and SLOs."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from scenarios.runs import load_for_run

REPO = Path(__file__).resolve().parents[2]


def _study():
    spec = importlib.util.spec_from_file_location("cache_study", REPO / "benchmarks" / "cache_study.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["cache_study"] = mod
    spec.loader.exec_module(mod)
    return mod


STUDY = _study()
PARTS = {p.name: p for p in STUDY.parts()}


def test_every_workload_runs_on_every_fleet_and_chat_also_closed():
    expected = {f"{w}-{f}" for w in ("chat", "sysprompt", "mooncake", "azure")
                for f in ("h100x8", "h100x16", "mixed")} | {"chat-closed", "chat-closed-think10"}
    assert set(PARTS) == expected
    # the 8 x H100 grids run first: an interrupted study has the core of the doc
    assert [p.name for p in STUDY.parts()][:4] == [f"{w}-h100x8" for w in ("chat", "sysprompt", "mooncake", "azure")]


@pytest.mark.parametrize("name", sorted(PARTS))
def test_part_overrides_load_and_give_the_stated_fleet(name):
    part = PARTS[name]
    sc, points = load_for_run(str(part.workload.scenario), part.sets)
    groups = {g.name: g.count for g in sc.cluster.groups}
    if name.endswith("h100x16"):
        assert groups == {"h100": 16}
    elif name.endswith("mixed"):
        assert groups == {"h100": 2, "l40s": 6}
        assert all(g.profile["model"] == "llama-3.1-8b" for g in sc.cluster.groups)
        assert sc.slo.tpot_ms == 50
    else:
        assert groups == {"h100": 8}
    rate_key = part.workload.rate_key
    rates = [p.axes[rate_key] for p in points]
    if "closed" in name:
        assert sc.arrivals.sessions == "closed" and rates == [24.0]
    else:
        assert sc.arrivals.sessions == "open"
        assert rates == part.workload.rates[part.fleet] and rates == sorted(rates)
        if part.fleet == "h100x8":
            assert len(rates) == 3  # load grows on the reference fleet
    assert sc.seeds == [0, 1, 2, 3, 4]


def test_the_8x_rates_are_the_scenario_files_own():
    for w in STUDY.WORKLOADS.values():
        sc, points = load_for_run(str(w.scenario))
        assert [p.axes[w.rate_key] for p in points] == w.rates["h100x8"]
        assert sc.num_requests == w.requests["h100x8"]


def test_strategies_passed_as_toml_round_trip():
    from scenarios.toml_compat import tomllib

    strategies = STUDY.file_strategies(STUDY.WORKLOADS["chat"]) + [
        {"name": "predictive", "label": "pred-linear-ttft", "model": 'm "x".json', "objective": "ttft"}]
    assert tomllib.loads("s = " + STUDY.toml_value(strategies))["s"] == strategies
