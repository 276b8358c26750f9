"""``extends``: a scenario file that starts from another and says only what it changes."""
from __future__ import annotations

from pathlib import Path

import pytest

from scenarios import ScenarioError, load_scenario, scenario_path
from scenarios.runs import scenario_digest

REPO = Path(__file__).resolve().parents[2]


def test_own_keys_override_tables_merge_and_arrays_are_replaced(tmp_path):
    f = tmp_path / "study.toml"
    f.write_text('extends = "burst"\nname = "study"\nseeds = [7]\n'
                 '[arrivals]\npeak_rate = 45.0\n'
                 '[router]\nstrategies = ["least_load"]\n')
    sc, base = load_scenario(f), load_scenario(scenario_path("burst"))
    assert (sc.name, sc.seeds) == ("study", [7])
    assert sc.arrivals.peak_rate == 45.0
    assert sc.arrivals.base_rate == base.arrivals.base_rate and sc.arrivals.pattern == "burst"
    assert [s.name for s in sc.router.strategies] == ["least_load"]  # replaced, not appended
    assert sc.router.scrape_interval_s == base.router.scrape_interval_s  # the rest of [router] kept
    assert sc.workload == base.workload and sc.cluster == base.cluster and sc.slo == base.slo


def test_a_base_by_relative_path_and_chains(tmp_path):
    (tmp_path / "a.toml").write_text('extends = "poisson"\nname = "a"\nnum_requests = 77\n')
    (tmp_path / "b.toml").write_text('extends = "a.toml"\nname = "b"\n[arrivals]\nrate = 3.0\n')
    sc = load_scenario(tmp_path / "b.toml")
    assert (sc.name, sc.num_requests, sc.arrivals.rate) == ("b", 77, 3.0)


def test_bad_bases_are_named(tmp_path):
    f = tmp_path / "x.toml"
    f.write_text('extends = "bursty"\n')
    with pytest.raises(ScenarioError, match=r"extends: 'bursty': no such file.*shipped: .*burst"):
        load_scenario(f)
    (tmp_path / "p.toml").write_text('extends = "q.toml"\n')
    (tmp_path / "q.toml").write_text('extends = "p.toml"\n')
    with pytest.raises(ScenarioError, match="extends.*this file"):
        load_scenario(tmp_path / "p.toml")
    f.write_text("extends = 3\n")
    with pytest.raises(ScenarioError, match="extends: got 3"):
        load_scenario(f)


@pytest.mark.parametrize("name", ["burst", "azure-replay", "heterogeneous"])
def test_the_experiments_are_their_shipped_scenarios_with_a_few_changes(name):
    study, shipped = load_scenario(REPO / "experiments" / f"{name}.toml"), load_scenario(scenario_path(name))
    assert study.workload == shipped.workload and study.cluster == shipped.cluster
    assert study.slo == shipped.slo and study.name == f"{name}-predictive"
    assert scenario_digest(study) != scenario_digest(shipped)
