"""Run identity shared by the simulator and live mode."""
from __future__ import annotations

import pytest

from scenarios import ScenarioError
from scenarios.runs import base_manifest, load_for_run, new_experiment_id, scenario_digest


def test_load_for_run_applies_sets_and_seeds_to_a_shipped_name():
    sc, points = load_for_run("poisson", ["arrivals.rate=[2.0, 3.0]"], "4,5")
    assert sc.seeds == [4, 5]
    assert [p.axes["arrivals.rate"] for p in points] == [2.0, 3.0]


@pytest.mark.parametrize("sets, seeds, needle", [
    (["arrivals.rat=2"], None, "arrivals.rat"),
    ([], "0,x", "--seeds"),
    (["no-equals-sign"], None, "KEY=VALUE"),
])
def test_load_for_run_errors_name_the_problem(sets, seeds, needle):
    with pytest.raises(ScenarioError, match=needle):
        load_for_run("poisson", sets, seeds)


def test_digest_depends_on_the_resolved_scenario_not_on_the_file():
    a, _ = load_for_run("poisson")
    b, _ = load_for_run("poisson", ["seeds=[0]"]) if a.seeds != [0] else load_for_run("poisson", ["seeds=[1]"])
    c, _ = load_for_run("scenarios/poisson.toml")
    assert scenario_digest(a) == scenario_digest(c)
    assert scenario_digest(a) != scenario_digest(b)
    ident = new_experiment_id(a, scenario_digest(a), tag="live")
    assert ident.startswith("poisson-live-") and ident.endswith(scenario_digest(a)[:6])
    m = base_manifest(a, load_for_run("poisson")[1], ident, scenario_digest(a), "live")
    assert m["mode"] == "live" and m["points"][0]["backends"][0]["name"].endswith("-0")
