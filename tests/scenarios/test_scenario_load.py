"""Loading: defaults, the shipped files, overrides, backends, the workload contract."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import routing
from scenarios import (
    ScenarioError, expand_grid, load_scenario, parse_scenario, scenario_path, shipped_scenarios,
)

from scenario_helpers import MINIMAL
from sim.latency import load_profile, shipped_profiles
from workload import build_trace
from workload.config import ArrivalSpec, WorkloadSpec

REPO = Path(__file__).resolve().parents[2]
SHIPPED = ["azure-replay", "burst", "cache-routing", "cache-study-azure", "cache-study-chat",
           "cache-study-mooncake", "cache-study-sysprompt", "chat-sessions", "concurrency", "constant",
           "heterogeneous", "mixed-fleet", "poisson", "wildchat-replay"]

#: [workload] keys that README and docs document (`workload.build_trace` receives
#: `dataclasses.asdict(spec)`); the schema may grow beyond them.
WORKLOAD_KEYS = {
    "source", "path", "dataset", "split", "tokenizer", "block_size", "languages",
    "exclude_toxic", "exclude_redacted", "max_turns", "min_input_len", "max_input_len",
    "min_output_len", "max_output_len", "max_conversations", "order", "active_sessions",
    "synthetic",
}
ARRIVAL_KEYS = {
    "pattern", "rate", "burstiness", "base_rate", "peak_rate", "on_s", "off_s", "time_scale",
    "target_rate",
}


def test_minimal_scenario_takes_documented_defaults():
    sc = parse_scenario(MINIMAL)
    assert sc.name == "mini" and sc.description == ""
    assert sc.seeds == [0] and sc.num_requests == 100 and sc.duration_s is None
    assert sc.drain_s == 600.0
    w = sc.workload
    assert (w.path, w.dataset, w.split, w.tokenizer, w.block_size) == ("", "allenai/WildChat-1M", "train", "deepseek", 16)
    assert (w.languages, w.exclude_toxic, w.exclude_redacted) == ([], True, False)
    assert (w.max_turns, w.min_input_len, w.max_input_len, w.min_output_len, w.max_output_len) == (0, 1, 0, 1, 0)
    assert (w.max_conversations, w.order, w.active_sessions) == (0, "interleave", 32)
    a = sc.arrivals
    assert (a.pattern, a.rate, a.burstiness, a.base_rate, a.peak_rate) == ("poisson", 1.0, 1.0, 1.0, 10.0)
    assert (a.on_s, a.off_s, a.time_scale, a.target_rate) == (10.0, 30.0, 1.0, 0.0)
    g = sc.cluster.groups[0]
    assert (g.max_num_seqs, g.max_num_batched_tokens, g.num_kv_blocks, g.block_size, g.enable_prefix_caching) == (0, 0, 0, 16, True)
    r = sc.router
    assert (r.scrape_interval_s, r.network_delay_s, r.timeout_s, r.mode) == (0.5, 0.0, 0.0, "fast")
    assert r.strategies[0] == routing_spec("round_robin")
    assert (sc.slo.ttft_ms, sc.slo.tpot_ms, sc.slo.e2el_ms) == (None, None, None)
    assert sc.source_text == MINIMAL and sc.source_path is None


def routing_spec(name):
    from scenarios import StrategySpec
    return StrategySpec(name=name, label=name, params={})


def test_workload_and_arrival_keys_match_the_workload_contract():
    sc = parse_scenario(MINIMAL)
    assert set(dataclasses.asdict(sc.workload)) >= WORKLOAD_KEYS
    assert set(dataclasses.asdict(sc.arrivals)) >= ARRIVAL_KEYS
    synthetic = dataclasses.asdict(sc.workload)["synthetic"]
    assert set(synthetic) >= {"input", "output", "prefix_groups", "prefix_len", "num_requests"}


def test_numbers_are_normalised_to_their_kind():
    sc = parse_scenario(MINIMAL.replace("[workload]", "[arrivals]\nrate = 3\n\n[workload]"))
    assert sc.arrivals.rate == 3.0 and isinstance(sc.arrivals.rate, float)


def test_strategy_tables_keep_label_and_params():
    text = MINIMAL.replace(
        'strategies = ["round_robin"]',
        'strategies = ["round_robin", { name = "least_load", label = "jsq" }, { name = "random", label = "rnd" }]',
    )
    sc = parse_scenario(text)
    assert [(s.name, s.label) for s in sc.router.strategies] == [
        ("round_robin", "round_robin"), ("least_load", "jsq"), ("random", "rnd"),
    ]
    assert all(s.params == {} for s in sc.router.strategies)


def test_strategy_params_are_kept_and_checked_against_the_registry(monkeypatch):
    class Tunable(routing.Strategy):  # a parameterised strategy, registered for this test only
        name = "test_tunable"

        def __init__(self, *, seed: int = 0, alpha: float = 0.5, greedy: bool = False) -> None:
            super().__init__(seed=seed)

        def choose(self, request, backends):
            return 0

    monkeypatch.setitem(routing.base._REGISTRY, Tunable.name, Tunable)
    text = MINIMAL.replace('strategies = ["round_robin"]', 'strategies = [{ name = "test_tunable", alpha = 2 }]')
    assert parse_scenario(text).router.strategies[0].params == {"alpha": 2}
    with pytest.raises(ScenarioError, match=r"router\.strategies\[0\]\.alpha: got string 'x'"):
        parse_scenario(text.replace("alpha = 2", 'alpha = "x"'))
    with pytest.raises(ScenarioError, match=r"router\.strategies\[0\]\.greedy: got integer 1"):
        parse_scenario(text.replace("alpha = 2", "greedy = 1"))
    with pytest.raises(ScenarioError, match=r"has no parameter 'beta'; its parameters: alpha, greedy"):
        parse_scenario(text.replace("alpha = 2", "beta = 1"))


def test_missing_required_strategy_parameter_fails_at_load(monkeypatch):
    class NeedsModel(routing.Strategy):
        name = "test_needs_model"

        def __init__(self, *, model: str, seed: int = 0) -> None:
            super().__init__(seed=seed)

        def choose(self, request, backends):
            return 0

    monkeypatch.setitem(routing.base._REGISTRY, NeedsModel.name, NeedsModel)
    text = MINIMAL.replace('strategies = ["round_robin"]', 'strategies = ["test_needs_model"]')
    with pytest.raises(ScenarioError, match=r"router\.strategies\[0\]: strategy 'test_needs_model' needs parameter\(s\) model"):
        parse_scenario(text)
    text = text.replace('["test_needs_model"]', '[{ name = "test_needs_model", model = "m.json" }]')
    assert parse_scenario(text).router.strategies[0].params == {"model": "m.json"}


def test_synthetic_distributions_are_validated_and_kept_as_tables():
    text = MINIMAL.replace('source = "sharegpt"', (
        'source = "synthetic"\n[workload.synthetic]\n'
        'input = { dist = "lognormal", mean = 512, sigma = 0.5, max = 2048 }\n'
        'output = { dist = "uniform", min = 10, max = 200 }\nprefix_groups = 4\nprefix_len = 64\n'
    ))
    syn = parse_scenario(text).workload.synthetic
    # typed, with the defaults filled in, and written back as the same tables
    assert dataclasses.asdict(syn.input) == {"dist": "lognormal", "mean": 512.0, "sigma": 0.5,
                                             "min": 1, "max": 2048}
    assert dataclasses.asdict(syn.output) == {"dist": "uniform", "min": 10, "max": 200}
    assert (syn.prefix_groups, syn.prefix_len, syn.num_requests) == (4, 64, 10000)


def test_synthetic_without_distributions_takes_vllm_bench_defaults():
    syn = parse_scenario(MINIMAL.replace('source = "sharegpt"', 'source = "synthetic"')).workload.synthetic
    assert dataclasses.asdict(syn.input) == {"dist": "fixed", "value": 1024}
    assert dataclasses.asdict(syn.output) == {"dist": "fixed", "value": 128}


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_scenario_loads_and_expands(name):
    path = shipped_scenarios()[name]
    sc = load_scenario(path)
    assert sc.name == name and sc.description and sc.source_path == path
    assert sc.source_text == path.read_text()
    assert len(sc.seeds) >= 2 and sc.slo.ttft_ms and sc.slo.tpot_ms
    points = expand_grid(sc)
    assert len(points) >= 2, "shipped scenarios demonstrate a grid"
    known = {s for s in routing.available()}
    assert {s.name for s in sc.router.strategies} <= known
    for p in points:
        assert p.scenario.is_resolved and p.scenario.backend_names()


def test_shipped_list_is_complete():
    assert sorted(shipped_scenarios()) == SHIPPED


def test_burst_is_the_quick_main_job():
    sc = load_scenario(REPO / "scenarios" / "burst.toml")
    assert sc.arrivals.pattern == "burst" and sc.workload.source == "sharegpt"
    assert 0 < sc.workload.max_conversations <= 5000
    assert {"round_robin", "least_load", "least_tokens", "power_of_two", "least_kv", "random"} == {
        s.name for s in sc.router.strategies
    }
    backends = expand_grid(sc)[0].scenario.backend_names()
    assert 4 <= len(backends) <= 8


def test_heterogeneous_mixes_fast_and_slow_profiles():
    sc = load_scenario(scenario_path("heterogeneous"))
    assert {g.profile for g in sc.cluster.groups} == {"h100-llama2-70b-tp4", "a100-llama2-70b-tp4"}


def test_scenario_path_finds_shipped_files_by_name_and_relative_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # away from the repository root
    burst = shipped_scenarios()["burst"]
    assert scenario_path("burst") == burst
    assert scenario_path("burst.toml") == burst
    assert scenario_path("scenarios/burst.toml") == burst
    own = tmp_path / "burst.toml"
    own.write_text(MINIMAL)
    assert scenario_path("burst.toml") == Path("burst.toml")  # an existing file wins
    with pytest.raises(ScenarioError, match="shipped: azure-replay, burst"):
        scenario_path("nope")


def test_overrides_replace_keys_before_validation():
    sc = parse_scenario(MINIMAL, overrides={
        "arrivals.rate": 3.0, "seeds": [1, 2], "cluster.groups.h100.count": 5,
        "router.mode": "exact", "slo.ttft_ms": 500,
    })
    assert sc.arrivals.rate == 3.0 and sc.seeds == [1, 2]
    assert sc.cluster.groups[0].count == 5 and sc.router.mode == "exact" and sc.slo.ttft_ms == 500.0
    by_position = parse_scenario(MINIMAL, overrides={"cluster.groups.0.profile": "a100-llama2-70b-tp4"})
    assert by_position.cluster.groups[0].profile == "a100-llama2-70b-tp4"


def test_overrides_can_create_grid_axes_and_do_not_mutate_the_source():
    sc = parse_scenario(MINIMAL, overrides={"arrivals.rate": [1, 2], "cluster.groups.h100.count": [1, 2]})
    assert sc.axes() == {"arrivals.rate": [1.0, 2.0], "cluster.groups.h100.count": [1, 2]}
    assert sc.source_text == MINIMAL
    assert parse_scenario(MINIMAL).axes() == {}


def test_backend_names_follow_groups_in_order():
    text = MINIMAL + '\n[[cluster.groups]]\nname = "a100"\ncount = 3\nprofile = "a100-llama2-70b-tp4"\n'
    sc = parse_scenario(text)
    assert sc.backend_names() == [
        ("h100-0", "h100"), ("h100-1", "h100"), ("a100-0", "a100"), ("a100-1", "a100"), ("a100-2", "a100"),
    ]
    assert [g.profile for _, g in sc.backends()][-1] == "a100-llama2-70b-tp4"


def test_backend_names_refuse_an_unexpanded_grid():
    sc = parse_scenario(MINIMAL, overrides={"cluster.groups.h100.count": [1, 2]})
    with pytest.raises(ValueError, match="expand_grid"):
        sc.backend_names()


def test_name_defaults_to_the_file_stem(tmp_path):
    path = tmp_path / "my-scenario.toml"
    path.write_text(MINIMAL.replace('name = "mini"\n', ""))
    assert load_scenario(path).name == "my-scenario"


def test_workload_builder_accepts_the_spec():
    text = MINIMAL.replace('source = "sharegpt"', (
        'source = "synthetic"\n[workload.synthetic]\n'
        'input = { dist = "fixed", value = 64 }\noutput = { dist = "fixed", value = 8 }\nnum_requests = 50\n'
    ))
    sc = parse_scenario(text)
    trace = build_trace(
        dataclasses.asdict(sc.workload), dataclasses.asdict(sc.arrivals), seed=0, num_requests=20,
    )
    assert len(trace) == 20
    assert (trace.input_len == 64).all()


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_points_pass_the_workload_packages_own_validation(name):
    for point in expand_grid(load_scenario(shipped_scenarios()[name])):
        workload = dataclasses.asdict(point.scenario.workload)
        arrivals = dataclasses.asdict(point.scenario.arrivals)
        assert WorkloadSpec.from_mapping(workload) == point.scenario.workload
        assert ArrivalSpec.from_mapping(arrivals) == point.scenario.arrivals


def test_shipped_scenarios_name_profiles_the_simulator_ships():
    profiles = set(shipped_profiles())
    for name, path in shipped_scenarios().items():
        for point in expand_grid(load_scenario(path)):
            for _, group in point.scenario.backends():
                if isinstance(group.profile, dict):  # derived: the simulator resolves it
                    load_profile(group.profile)
                    continue
                assert group.profile in profiles, f"{name}: unknown profile {group.profile!r}"
