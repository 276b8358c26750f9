"""Every class of bad input fails at load time, naming file, key path and what is allowed."""
from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import routing
from scenarios import AXES, ScenarioError, load_scenario, parse_scenario
from scenario_helpers import MINIMAL
from workload.config import ArrivalSpec

SOURCE = "bad.toml"


def error_of(text: str, overrides=None) -> ScenarioError:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, source=SOURCE, overrides=overrides)
    return info.value


def with_workload(extra: str) -> str:
    return MINIMAL.replace('source = "sharegpt"\n', f'source = "sharegpt"\n{extra}\n')


def with_table(table: str) -> str:
    return MINIMAL + "\n" + table + "\n"


def with_group(extra: str) -> str:
    return MINIMAL.replace('profile = "h100-llama2-70b-tp4"\n', f'profile = "h100-llama2-70b-tp4"\n{extra}\n')


def with_strategies(value: str) -> str:
    return MINIMAL.replace('strategies = ["round_robin"]', f"strategies = {value}")


SYNTHETIC = MINIMAL.replace('source = "sharegpt"', (
    'source = "synthetic"\n[workload.synthetic]\n'
    'input = { dist = "fixed", value = 100 }\noutput = { dist = "fixed", value = 7 }'
))

CASES = {
    # class: (text, key path, fragments that must appear in the message)
    "unknown top-level key": (
        MINIMAL.replace("num_requests", "num_requets"), "num_requets",
        ["unknown key", "did you mean 'num_requests'", "allowed keys here: name, description, seeds"],
    ),
    "unknown section key": (
        with_table("[arrivals]\nrat = 2.0"), "arrivals.rat",
        ["did you mean 'rate'", "base_rate, peak_rate"],
    ),
    "unknown group key": (
        with_group("max_num_seq = 4"), "cluster.groups[0].max_num_seq",
        ["did you mean 'max_num_seqs'"],
    ),
    "unknown key without a close match": (
        with_table("[slo]\nbanana = 1"), "slo.banana",
        ["unknown key; allowed keys here: ttft_ms, tpot_ms, e2el_ms"],
    ),
    "wrong type: string for number": (
        with_table('[arrivals]\nrate = "fast"'), "arrivals.rate",
        ["got string 'fast'", "expected a number > 0"],
    ),
    "wrong type: float for integer": (
        with_group("max_num_seqs = 2.5"), "cluster.groups[0].max_num_seqs",
        ["got float 2.5", "expected an integer >= 0"],
    ),
    "wrong type: bool for integer": (
        MINIMAL.replace("num_requests = 100", "num_requests = true"), "num_requests",
        ["got boolean True", "expected an integer >= 1"],
    ),
    "wrong type: string for bool": (
        with_workload('exclude_toxic = "yes"'), "workload.exclude_toxic",
        ["got string 'yes'", "expected true or false"],
    ),
    "wrong type: table for section": (
        "router = 3\n" + MINIMAL.replace('[router]\nstrategies = ["round_robin"]\n', ""), "router",
        ["expected a table"],
    ),
    "wrong type: string list": (
        with_workload("languages = [1, 2]"), "workload.languages",
        ["expected a list of strings"],
    ),
    "out of range: count 0": (
        MINIMAL.replace("count = 2", "count = 0"), "cluster.groups[0].count",
        ["got 0, out of range", "expected an integer >= 1"],
    ),
    "out of range: negative rate": (
        with_table("[arrivals]\nrate = -1"), "arrivals.rate",
        ["out of range", "expected a number > 0"],
    ),
    "out of range: nan": (
        with_table("[arrivals]\nburstiness = nan"), "arrivals.burstiness",
        ["got nan", "expected a number > 0"],
    ),
    "out of range: slo": (
        with_table("[slo]\nttft_ms = 0"), "slo.ttft_ms", ["expected a number > 0"],
    ),
    "out of range: max below min": (
        with_workload("min_input_len = 10\nmax_input_len = 5"), "workload.max_input_len",
        ["5 is below min_input_len = 10", "0 (no limit) or a value >= 10"],
    ),
    "out of range: negative seed": (
        MINIMAL.replace('name = "mini"', 'name = "mini"\nseeds = [1, -2]'), "seeds[1]",
        ["integers >= 0"],
    ),
    "duplicate seeds": (
        MINIMAL.replace('name = "mini"', 'name = "mini"\nseeds = [3, 3]'), "seeds[1]",
        ["appears twice"],
    ),
    "seeds not a list": (
        MINIMAL.replace('name = "mini"', 'name = "mini"\nseeds = 3'), "seeds",
        ["got integer 3", "expected a list of integers"],
    ),
    "unknown enum value": (
        with_table('[arrivals]\npattern = "poison"'), "arrivals.pattern",
        ["unknown value 'poison'", "did you mean 'poisson'", "one of 'poisson', 'gamma', 'constant', 'burst', 'replay'"],
    ),
    "unknown source": (
        MINIMAL.replace('source = "sharegpt"', 'source = "reddit"'), "workload.source",
        ["unknown value 'reddit'", "'sharegpt', 'wildchat', 'azure', 'mooncake', 'vllm_custom', 'synthetic'"],
    ),
    "unknown mode": (
        MINIMAL.replace("[router]\n", '[router]\nmode = "slow"\n'), "router.mode",
        ["one of 'fast', 'exact'"],
    ),
    "unknown strategy": (
        with_strategies('["round_robin", "least_loaded"]'), "router.strategies[1]",
        # each name, not the joined list: other test modules register test strategies
        ["unknown strategy 'least_loaded'", "; available: ", *routing.available()],
    ),
    "unknown strategy in a table": (
        with_strategies('[{ name = "fastest" }]'), "router.strategies[0].name",
        ["unknown strategy 'fastest'", "least_kv"],
    ),
    "unknown strategy parameter": (
        with_strategies('[{ name = "least_load", temperature = 2 }]'), "router.strategies[0].temperature",
        ["strategy 'least_load' has no parameter 'temperature'", "its parameters: (none)"],
    ),
    "strategy table without name": (
        with_strategies('[{ label = "x" }]'), "router.strategies[0].name",
        ["missing required key", "round_robin"],
    ),
    "strategy entry of wrong type": (
        with_strategies("[3]"), "router.strategies[0]", ["got integer 3", "strategy name or a table"],
    ),
    "empty strategy list": (
        with_strategies("[]"), "router.strategies", ["non-empty list"],
    ),
    "duplicate strategy labels": (
        with_strategies('["random", { name = "random" }]'),
        "router.strategies[1]", ["label 'random' is already used by router.strategies[0]", "add label"],
    ),
    "unsafe strategy label": (
        with_strategies('[{ name = "random", label = "a/b" }]'), "router.strategies[0].label",
        ["names run folders"],
    ),
    "duplicate group names": (
        MINIMAL + '\n[[cluster.groups]]\nname = "h100"\nprofile = "x"\n', "cluster.groups[1].name",
        ["'h100' is already the name of cluster.groups[0]", "must be unique"],
    ),
    "unsafe group name": (
        MINIMAL.replace('name = "h100"', 'name = "h.100"'), "cluster.groups[0].name",
        ["letters, digits"],
    ),
    "missing required key: source": (
        MINIMAL.replace('source = "sharegpt"\n', ""), "workload.source",
        ["missing required key", "'sharegpt', 'wildchat', 'azure', 'mooncake', 'vllm_custom', 'synthetic'"],
    ),
    "missing required key: profile": (
        MINIMAL.replace('profile = "h100-llama2-70b-tp4"\n', ""), "cluster.groups[0].profile",
        ["missing required key", "a profile name", "derived profile { model ="],
    ),
    "missing required table": (
        MINIMAL.replace('[router]\nstrategies = ["round_robin"]\n', ""), "router",
        ["missing required table [router]"],
    ),
    "missing groups": (
        MINIMAL[: MINIMAL.index("[[cluster.groups]]")] + '[cluster]\n[router]\nstrategies = ["random"]\n',
        "cluster.groups", ["at least one [[cluster.groups]]"],
    ),
    "missing request amount": (
        MINIMAL.replace("num_requests = 100\n", ""), "num_requests",
        ["give num_requests", "or duration_s"],
    ),
    "list on a non-axis key": (
        with_table("[arrivals]\non_s = [5, 10]"), "arrivals.on_s",
        ["got a list", "only these keys may be lists (grid axes): " + ", ".join(AXES)],
    ),
    "list on a non-axis group key": (
        with_group("block_size = [16, 32]"), "cluster.groups[0].block_size",
        ["got a list", "cluster.groups.<group>.count"],
    ),
    "empty axis list": (
        with_table("[arrivals]\nrate = []"), "arrivals.rate", ["empty list gives no grid points"],
    ),
    "duplicate axis values": (
        with_table("[arrivals]\nrate = [2, 2.0]"), "arrivals.rate[1]", ["appears twice"],
    ),
    "bad value inside an axis list": (
        MINIMAL.replace("count = 2", "count = [2, -1]"), "cluster.groups[0].count[1]",
        ["expected an integer >= 1"],
    ),
    "unknown distribution": (
        SYNTHETIC.replace('dist = "fixed", value = 100', 'dist = "normal", value = 100'),
        "workload.synthetic.input.dist", ["'fixed', 'uniform', 'lognormal'"],
    ),
    "distribution missing a key": (
        SYNTHETIC.replace('dist = "fixed", value = 7', 'dist = "uniform", min = 10'),
        "workload.synthetic.output.max", ["missing required key for dist = 'uniform'"],
    ),
    "distribution with a foreign key": (
        SYNTHETIC.replace('dist = "fixed", value = 100', 'dist = "fixed", value = 100, sigma = 1'),
        "workload.synthetic.input.sigma", ["allowed keys here: dist, value"],
    ),
    "distribution non-positive": (
        SYNTHETIC.replace('dist = "fixed", value = 100', 'dist = "lognormal", mean = 0, sigma = 0'),
        "workload.synthetic.input.mean", ["expected a number > 0"],
    ),
    "distribution negative sigma": (
        SYNTHETIC.replace('dist = "fixed", value = 100', 'dist = "lognormal", mean = 9, sigma = -1'),
        "workload.synthetic.input.sigma", ["expected a number >= 0"],
    ),
    "distribution min above max": (
        SYNTHETIC.replace('dist = "fixed", value = 7', 'dist = "uniform", min = 50, max = 10'),
        "workload.synthetic.output.max", ["10 is below min = 50"],
    ),
    "prefix groups without length": (
        SYNTHETIC.replace("value = 7 }", "value = 7 }\nprefix_groups = 4"), "workload.synthetic.prefix_len",
        ["prefix_groups > 0"],
    ),
    "prefix length without groups": (
        SYNTHETIC.replace("value = 7 }", "value = 7 }\nprefix_len = 64"), "workload.synthetic.prefix_groups",
        ["prefix_len > 0"],
    ),
    "replay speed set twice": (
        MINIMAL.replace('source = "sharegpt"', 'source = "azure"')
        + '\n[arrivals]\npattern = "replay"\ntime_scale = 2.0\ntarget_rate = [0, 5]\n',
        "arrivals.target_rate", ["give time_scale", "or target_rate", "not both"],
    ),
    "replay without timestamps": (
        with_table('[arrivals]\npattern = ["poisson", "replay"]'), "arrivals.pattern",
        ["workload.source = 'sharegpt' has none", "azure, mooncake, wildchat"],
    ),
    "block size mismatch": (
        with_group("block_size = 32"), "cluster.groups[0].block_size",
        ["32 differs from workload.block_size = 16"],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_names_file_key_and_allowed_values(case):
    text, key, fragments = CASES[case]
    err = error_of(text)
    assert err.key == key, str(err)
    message = str(err)
    assert message.startswith(f"{SOURCE}: {key}: "), message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_invalid_toml_names_the_line():
    err = error_of(MINIMAL.replace("count = 2", "count = = 2"))
    assert str(err).startswith(f"{SOURCE}: invalid TOML")
    line = MINIMAL.splitlines().index("count = 2") + 1
    assert re.search(rf"line {line}\b", str(err)), str(err)


def test_missing_file_is_a_scenario_error(tmp_path):
    with pytest.raises(ScenarioError, match="scenario file not found") as info:
        load_scenario(tmp_path / "nope.toml")
    assert str(tmp_path / "nope.toml") in str(info.value)


def test_error_from_an_override_says_so():
    err = error_of(MINIMAL, overrides={"cluster.groups.h100.count": 0})
    assert err.key == "cluster.groups[0].count"
    assert "(set by override cluster.groups.h100.count=0)" in str(err)
    err = error_of(MINIMAL, overrides={"arivals.rate": 2})
    assert err.key == "arivals" and "did you mean 'arrivals'" in str(err)
    assert "set by override arivals.rate=2" in str(err)


def test_override_of_a_missing_group_lists_the_groups():
    err = error_of(MINIMAL, overrides={"cluster.groups.a100.count": 2})
    assert "no cluster group named 'a100'; groups: 'h100'" in str(err)


def test_override_through_a_scalar_is_refused():
    err = error_of(MINIMAL, overrides={"num_requests.x": 2})
    assert "not a table" in str(err)


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12))
def test_any_unknown_arrivals_key_is_rejected_by_name(key):
    # Only the rejection is under test: real keys (whose values have their own
    # rules, e.g. pattern = 1.0 is a type error) are not what this generates.
    assume(key not in {f.name for f in dataclasses.fields(ArrivalSpec)})
    text = with_table(f"[arrivals]\n{key} = 1.0")
    err = error_of(text)
    assert err.key == f"arrivals.{key}" and "unknown key" in str(err)
