"""The capacity search: the bracket rule alone, and a fleet whose capacity is known in closed form."""
from __future__ import annotations

import json
import math

import pytest

from results.capacity import capacity_rows, format_capacity, read_capacity
from scenarios.runs import load_for_run
from sim.capacity import CapacityOptions, bracket_search, capacity_document, fleets, run_capacity
from sim.latency import EngineDefaults, LatencyModel, LatencyProfile


def step(capacity: float):
    """Attainment 1 up to ``capacity``, then 0 (three seeds agree)."""
    return lambda load: [1.0 if load <= capacity else 0.0] * 3


@pytest.mark.parametrize("capacity,start", [(7.3, 1.0), (7.3, 100.0), (0.04, 3.0), (250.0, 250.0)])
def test_the_bracket_holds_the_capacity_and_is_narrow(capacity, start):
    opts = CapacityOptions(target=0.9, rel_tol=0.05)
    s = bracket_search(step(capacity), start, opts)
    assert s.lo <= capacity < s.hi
    assert (s.hi - s.lo) <= 0.05 * s.lo
    assert all(p.passed(0.9) == (p.load <= capacity) for p in s.probes)


def test_clients_are_searched_in_whole_numbers():
    s = bracket_search(step(13), 4, CapacityOptions(), integer=True)
    assert (s.lo, s.hi) == (13, 14)
    assert all(float(p.load).is_integer() for p in s.probes)
    none = bracket_search(step(0.5), 8, CapacityOptions(), integer=True)
    assert math.isnan(none.lo) and none.hi == 1 and "even one client" in none.note


def test_the_mean_over_seeds_decides_and_a_search_out_of_range_says_so():
    # Seeds disagree between 5 and 6: mean attainment 2/3 there, below a 0.9 target.
    s = bracket_search(lambda x: [1.0 if x <= 6 else 0.0, 1.0 if x <= 5 else 0.0, 1.0],
                       1.0, CapacityOptions(target=0.9, rel_tol=0.01))
    assert s.lo <= 5 < s.hi <= 6.06
    high = bracket_search(step(1e9), 1.0, CapacityOptions())
    assert math.isnan(high.hi) and "capacity is higher" in high.note
    low = bracket_search(step(1e-9), 1.0, CapacityOptions())
    assert math.isnan(low.lo) and "capacity is lower" in low.note
    capped = bracket_search(step(7.3), 1.0, CapacityOptions(max_probes=4))
    assert "stopped after 4 probes" in capped.note and capped.lo <= 7.3 < capped.hi


DETERMINISTIC = """\
name = "closed-form"
seeds = [0]
num_requests = 100

[workload]
source = "synthetic"

[workload.synthetic]
input = {{ dist = "fixed", value = 32 }}
output = {{ dist = "fixed", value = 10 }}
num_requests = 200

[arrivals]
pattern = "constant"
rate = 4.0

[[cluster.groups]]
name = "one"
count = 1
profile = "{profile}"
max_num_seqs = 1

[router]
strategies = ["round_robin"]

[slo]
ttft_ms = 1000
"""


def test_the_search_finds_a_closed_form_capacity_within_its_bracket(tmp_path):
    """One backend serving one request at a time, every step 10 ms, constant arrivals.

    A request of 10 output tokens takes S = 10 steps = 0.1 s (prefill gives the first
    token after one step, c = 0.01 s). At rate r > 1/S request k (from 0) waits
    k (S - 1/r), so its TTFT is k (S - 1/r) + c. With 100 requests, attainment >= 0.9
    needs requests 0..89 within 1 s: 89 (S - 1/r) <= 1 - c, i.e.
    r <= 1 / (S - 0.99 / 89) = 11.2516 req/s.
    """
    profile = LatencyProfile("deterministic", LatencyModel(step_s=0.01, token_s=0.0),
                             EngineDefaults(num_kv_blocks=400), jitter_cv=0.0)
    path = tmp_path / "det.json"
    path.write_text(profile.to_json())
    scenario_file = tmp_path / "closed-form.toml"
    scenario_file.write_text(DETERMINISTIC.format(profile=path))
    scenario, points = load_for_run(str(scenario_file))
    expected = 1.0 / (0.1 - 0.99 / 89)
    assert expected == pytest.approx(11.2516, abs=1e-4)
    opts = CapacityOptions(target=0.9, rel_tol=0.01)
    results = run_capacity(scenario, points, opts)
    (fleet, search), = results
    assert fleet.knob == "rate" and fleet.start == 4.0
    assert search.lo <= expected < search.hi, (search.lo, search.hi)
    assert search.hi - search.lo <= 0.01 * search.lo
    # Below the capacity every request is on time; just above it, 89 are (0.89 < 0.9).
    by_load = {p.load: p.mean for p in search.probes}
    assert by_load[search.lo] >= 0.9 > by_load[search.hi]
    doc = capacity_document(scenario, results, opts)
    (tmp_path / "capacity.json").write_text(json.dumps(doc))
    rows = capacity_rows(read_capacity(tmp_path))
    assert rows["capacity"].iloc[0] == search.lo and rows["unit"].iloc[0] == "req/s"
    assert "closed-form" not in format_capacity(doc) and "round_robin" in format_capacity(doc)


def test_fleets_drop_the_load_axis_and_start_from_its_highest_value():
    scenario, points = load_for_run("poisson", ["cluster.groups.h100.count=[4,8]"])
    fl = fleets(scenario, points)
    assert len(points) == 8 and len(fl) == 2
    assert {f.start for f in fl} == {16.0} and all(f.knob == "rate" for f in fl)
    assert sorted(f.label for f in fl) == ["h100.count=4", "h100.count=8"]


def test_a_scenario_without_an_slo_is_refused():
    from dataclasses import replace

    scenario, points = load_for_run("poisson")
    bare = replace(scenario, slo=replace(scenario.slo, ttft_ms=None, tpot_ms=None, e2el_ms=None))
    with pytest.raises(ValueError, match="needs an SLO"):
        run_capacity(bare, points, CapacityOptions())


def test_the_search_stops_where_more_clients_add_no_load():
    s = bracket_search(step(1e9), 8, CapacityOptions(), integer=True, upper=100)
    assert s.lo == 100 and math.isnan(s.hi) and "every session of the trace runs at once" in s.note
    assert max(p.load for p in s.probes) == 100
    inside = bracket_search(step(37), 8, CapacityOptions(), integer=True, upper=100)
    assert (inside.lo, inside.hi) == (37, 38)
