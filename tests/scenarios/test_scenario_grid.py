"""Grid expansion: cartesian product, deterministic order, stable safe ids, scalar points."""
from __future__ import annotations

import itertools
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from scenarios import expand_grid, parse_scenario, point_id
from scenario_helpers import MINIMAL

SAFE = re.compile(r"^[A-Za-z0-9._+-]+$")  # what results.rundir accepts unchanged

TWO_GROUPS = MINIMAL.replace('name = "mini"', 'name = "grid"') + (
    '\n[[cluster.groups]]\nname = "a100"\ncount = 1\nprofile = "a100-llama2-70b-tp4"\n'
)


def test_no_axes_gives_one_default_point():
    sc = parse_scenario(MINIMAL)
    (point,) = expand_grid(sc)
    assert point.point_id == "default" and point.axes == {} and point.scenario is sc
    assert point.label == "single point"


def test_product_order_and_resolution():
    sc = parse_scenario(TWO_GROUPS, overrides={
        "arrivals.rate": [2, 4, 8],
        "cluster.groups.a100.count": [1, 3],
        "router.scrape_interval_s": [0.1, 1.0],
    })
    points = expand_grid(sc)
    assert len(points) == 3 * 2 * 2
    expected = list(itertools.product([2.0, 4.0, 8.0], [1, 3], [0.1, 1.0]))
    got = [(p.axes["arrivals.rate"], p.axes["cluster.groups.a100.count"], p.axes["router.scrape_interval_s"]) for p in points]
    assert got == expected  # file order of values, last axis fastest
    for p, (rate, count, scrape) in zip(points, expected):
        s = p.scenario
        assert s.is_resolved
        assert s.arrivals.rate == rate and s.router.scrape_interval_s == scrape
        assert [g.count for g in s.cluster.groups] == [2, count]  # h100 untouched
        assert len(s.backend_names()) == 2 + count
        assert s.router.strategies == sc.router.strategies and s.seeds == sc.seeds
        assert s.source_text == sc.source_text


def test_axes_of_every_kind_resolve():
    sc = parse_scenario(MINIMAL, overrides={
        "arrivals.pattern": ["poisson", "gamma"],
        "workload.max_input_len": [0, 1024],
        "workload.max_output_len": [256, 512],
        "cluster.groups.h100.profile": ["h100-llama2-70b-tp4", "h100-llama2-70b-tp8"],
        "cluster.groups.h100.enable_prefix_caching": [True, False],
        "cluster.groups.h100.max_num_seqs": [64, 256],
        "cluster.groups.h100.max_num_batched_tokens": [2048, 8192],
        "cluster.groups.h100.num_kv_blocks": [1000, 2000],
        "arrivals.burstiness": [0.5, 1.0],
        "arrivals.peak_rate": [5, 6],
        "arrivals.time_scale": [1, 2],
        "arrivals.target_rate": [0, 3],
    })
    points = expand_grid(sc)
    assert len(points) == 2 ** 12
    assert len({p.point_id for p in points}) == len(points)
    for p in points[:: 97]:
        assert p.scenario.is_resolved
        assert p.scenario.cluster.groups[0].enable_prefix_caching == p.axes["cluster.groups.h100.enable_prefix_caching"]
        assert p.scenario.workload.max_output_len == p.axes["workload.max_output_len"]


def test_describe_gives_the_manifest_entry():
    sc = parse_scenario(TWO_GROUPS, overrides={"cluster.groups.a100.count": [2]})
    (point,) = expand_grid(sc)
    assert point.describe() == {
        "point_id": point.point_id,
        "label": "a100.count=2",
        "axes": {"cluster.groups.a100.count": 2},
        "backends": [
            {"name": "h100-0", "group": "h100", "profile": "h100-llama2-70b-tp4"},
            {"name": "h100-1", "group": "h100", "profile": "h100-llama2-70b-tp4"},
            {"name": "a100-0", "group": "a100", "profile": "a100-llama2-70b-tp4"},
            {"name": "a100-1", "group": "a100", "profile": "a100-llama2-70b-tp4"},
        ],
    }


def test_point_ids_are_stable_readable_and_safe():
    sc = parse_scenario(TWO_GROUPS, overrides={"arrivals.rate": [4, 0.5], "cluster.groups.h100.profile": ["x/y z", "b"]})
    first = [p.point_id for p in expand_grid(sc)]
    again = [p.point_id for p in expand_grid(parse_scenario(TWO_GROUPS, overrides={
        "arrivals.rate": [4, 0.5], "cluster.groups.h100.profile": ["x/y z", "b"]}))]
    assert first == again
    assert all(SAFE.match(i) for i in first)
    assert first[0].startswith("rate_4+h100.profile_x_y_z-")
    assert first[2].startswith("rate_0.5+h100.profile_x_y_z-")
    assert expand_grid(sc)[0].label == "rate=4, h100.profile=x/y z"


def test_same_axes_give_the_same_id_whatever_else_differs():
    a = parse_scenario(MINIMAL, overrides={"arrivals.rate": [3, 5]})
    b = parse_scenario(MINIMAL.replace("num_requests = 100", "num_requests = 999"), overrides={"arrivals.rate": [5, 3]})
    ids_a = {p.axes["arrivals.rate"]: p.point_id for p in expand_grid(a)}
    ids_b = {p.axes["arrivals.rate"]: p.point_id for p in expand_grid(b)}
    assert ids_a == ids_b


def test_values_that_read_alike_get_distinct_ids():
    # "a b" and "a_b" sanitise to the same readable text; the hash tells them apart.
    assert point_id({"cluster.groups.g.profile": "a b"}) != point_id({"cluster.groups.g.profile": "a_b"})
    assert point_id({"arrivals.rate": 1.0}) != point_id({"arrivals.burstiness": 1.0})


def test_long_ids_stay_short():
    sc = parse_scenario(MINIMAL, overrides={"cluster.groups.h100.profile": ["p" * 300, "q" * 300]})
    assert all(len(p.point_id) <= 80 + 9 for p in expand_grid(sc))


axis_values = {
    "arrivals.rate": st.lists(st.floats(0.01, 1000), min_size=1, max_size=3, unique=True),
    "arrivals.pattern": st.lists(st.sampled_from(["poisson", "gamma", "constant", "burst"]), min_size=1, max_size=3, unique=True),
    "cluster.groups.h100.count": st.lists(st.integers(1, 64), min_size=1, max_size=3, unique=True),
    "cluster.groups.h100.enable_prefix_caching": st.lists(st.booleans(), min_size=1, max_size=2, unique=True),
    "workload.max_input_len": st.lists(st.integers(0, 10_000), min_size=1, max_size=3, unique=True),
    "router.scrape_interval_s": st.lists(st.floats(0.001, 10), min_size=1, max_size=2, unique=True),
}


@settings(max_examples=60, deadline=None)
@given(st.fixed_dictionaries({}, optional=axis_values))
def test_grid_is_the_cartesian_product(chosen):
    sc = parse_scenario(MINIMAL, overrides=chosen)
    points = expand_grid(sc)
    expected = 1
    for values in chosen.values():
        expected *= len(values)
    assert len(points) == expected
    ids = [p.point_id for p in points]
    assert len(set(ids)) == len(ids)
    assert all(SAFE.match(i) for i in ids)
    assert ids == [p.point_id for p in expand_grid(sc)]  # deterministic
    combos = {tuple(sorted(p.axes.items())) for p in points}
    assert len(combos) == expected
    for p in points:
        assert set(p.axes) == set(chosen)
        assert p.scenario.is_resolved
        for axis, value in p.axes.items():
            assert value in chosen[axis]
