"""A scenario file and ``workload.build_trace`` accept and reject the same [workload]/[arrivals].

Two entry points read these tables: ``build_trace(workload, arrivals)`` and a
scenario file (``scenarios.parse_scenario``). For every case below, and for
tables hypothesis makes up, both must agree on whether the tables are valid,
and on the key path a rejection names.
"""
from __future__ import annotations

import copy
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scenarios import ScenarioError, parse_scenario
from scenarios.toml_compat import tomllib
from scenarios.validate import build_scenario
from workload import build_trace
from workload.config import ArrivalSpec, WorkloadSpec, check_pair
from workload.tables import SchemaError

from scenario_helpers import MINIMAL

BASE = tomllib.loads(MINIMAL)
SYN = {"source": "synthetic", "synthetic": {"num_requests": 40}}


def via_workload(workload: dict, arrivals: dict) -> str | None:
    """``None`` when the workload package accepts the tables, else the key its error names.

    These are the checks ``build_trace`` runs before it reads any dataset; for
    synthetic tables (cheap) the real ``build_trace`` must then agree.
    """
    try:
        check_pair(WorkloadSpec.from_mapping(workload), ArrivalSpec.from_mapping(arrivals))
    except SchemaError as exc:
        return exc.key
    if workload.get("source") == "synthetic":
        try:
            build_trace(workload, arrivals, seed=0, num_requests=5, cache_dir=False)
        except SchemaError as exc:  # pragma: no cover - the failure this guards against
            pytest.fail(f"build_trace rejects tables its own checks accept: {exc}")
        except ValueError as exc:  # valid tables whose data leave nothing, e.g. every length filtered
            assert "no request is left" in str(exc), exc
    return None


def via_scenario(workload: dict, arrivals: dict) -> str | None:
    """The same for a scenario document holding these tables."""
    doc = copy.deepcopy(BASE)
    doc["workload"] = copy.deepcopy(workload)
    doc["arrivals"] = copy.deepcopy(arrivals)
    block = workload.get("block_size", 16)
    if isinstance(block, int) and not isinstance(block, bool):
        doc["cluster"]["groups"][0]["block_size"] = block  # the groups' must match the workload's
    try:
        build_scenario(doc)
    except ScenarioError as exc:
        return exc.key
    return None


ACCEPTED = {
    "burstiness inf (a constant rate)": (SYN, {"pattern": "gamma", "burstiness": math.inf}),
    "min_input_len 0": ({**SYN, "min_input_len": 0}, {}),
    "lognormal max 0 (no bound)": ({**SYN, "synthetic": {
        "input": {"dist": "lognormal", "mean": 100, "sigma": 0.5, "max": 0}}}, {}),
    "lognormal sigma 0": ({**SYN, "synthetic": {
        "input": {"dist": "lognormal", "mean": 100, "sigma": 0}}}, {}),
    "synthetic with its defaults": ({"source": "synthetic"}, {}),
    "replay at a target rate": ({"source": "azure"}, {"pattern": "replay", "target_rate": 2.0}),
    "integers where numbers are expected": (SYN, {"rate": 3, "peak_rate": 20}),
    "languages on wildchat": ({"source": "wildchat", "languages": ["English"]}, {}),
}
REJECTED = {
    "unknown workload key": ({**SYN, "max_input_length": 5}, {}, "workload.max_input_length"),
    "unknown arrivals key": (SYN, {"burstyness": 2}, "arrivals.burstyness"),
    "bad source": ({"source": "lmsys"}, {}, "workload.source"),
    "missing source": ({}, {}, "workload.source"),
    "max below min": ({**SYN, "min_output_len": 9, "max_output_len": 3}, {}, "workload.max_output_len"),
    "negative min_input_len": ({**SYN, "min_input_len": -1}, {}, "workload.min_input_len"),
    "rate 0": (SYN, {"rate": 0}, "arrivals.rate"),
    "rate inf": (SYN, {"rate": math.inf}, "arrivals.rate"),
    "burstiness nan": (SYN, {"burstiness": math.nan}, "arrivals.burstiness"),
    "burstiness -inf": (SYN, {"burstiness": -math.inf}, "arrivals.burstiness"),
    "lognormal sigma < 0": ({**SYN, "synthetic": {
        "input": {"dist": "lognormal", "mean": 100, "sigma": -0.1}}}, {},
        "workload.synthetic.input.sigma"),
    "lognormal max below min": ({**SYN, "synthetic": {
        "input": {"dist": "lognormal", "mean": 100, "sigma": 1, "min": 50, "max": 10}}}, {},
        "workload.synthetic.input.max"),
    "uniform max 0": ({**SYN, "synthetic": {"input": {"dist": "uniform", "min": 1, "max": 0}}}, {},
                      "workload.synthetic.input.max"),
    "foreign distribution key": ({**SYN, "synthetic": {"input": {"dist": "fixed", "value": 3, "sigma": 1}}},
                                 {}, "workload.synthetic.input.sigma"),
    "prefix length without groups": ({**SYN, "synthetic": {"prefix_len": 8}}, {},
                                      "workload.synthetic.prefix_groups"),
    "replay without timestamps": ({"source": "sharegpt"}, {"pattern": "replay"}, "arrivals.pattern"),
    "languages without labels": ({**SYN, "languages": ["English"]}, {}, "workload.languages"),
    "replay speed twice": ({"source": "azure"}, {"pattern": "replay", "time_scale": 2.0, "target_rate": 1.0},
                           "arrivals.target_rate"),
    "empty tokenizer": ({**SYN, "tokenizer": ""}, {}, "workload.tokenizer"),
    "boolean block size": ({**SYN, "block_size": True}, {}, "workload.block_size"),
}


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_both_accept(case):
    workload, arrivals = ACCEPTED[case]
    assert via_workload(workload, arrivals) is None
    assert via_scenario(workload, arrivals) is None


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_both_reject_naming_the_same_key(case):
    workload, arrivals, key = REJECTED[case]
    assert via_workload(workload, arrivals) == key
    assert via_scenario(workload, arrivals) == key


def test_a_scenario_file_takes_inf_and_the_documented_zeros():
    text = MINIMAL.replace('source = "sharegpt"', (
        'source = "synthetic"\nmin_input_len = 0\n[workload.synthetic]\n'
        'input = { dist = "lognormal", mean = 300, sigma = 0, max = 0 }'
    )) + '\n[arrivals]\npattern = "gamma"\nburstiness = [0.5, inf]\n'
    sc = parse_scenario(text, source="inf.toml")
    assert sc.arrivals.burstiness == [0.5, math.inf] and sc.workload.min_input_len == 0
    assert sc.workload.synthetic.input.sigma == 0.0 and sc.workload.synthetic.input.max == 0


# --- made-up tables --------------------------------------------------------------------------
BAD = st.one_of(st.integers(-3, 0), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                st.text(max_size=3))
# mostly plausible values, so that a good share of the tables is valid
INTS = st.one_of(*[st.integers(1, 4000)] * 4, st.integers(0, 50), BAD)
NUMBERS = st.one_of(*[st.floats(0.5, 100.0)] * 3, st.integers(1, 100), st.just(math.inf), BAD)
WORKLOAD_VALUES = {
    "source": st.sampled_from(["synthetic"] * 3 + ["sharegpt", "azure", "wildchat", "reddit"]),
    "block_size": st.one_of(st.sampled_from([16, 32]), INTS),
    "min_input_len": INTS, "max_input_len": INTS,
    "min_output_len": INTS, "max_output_len": INTS,
    "order": st.sampled_from(["interleave", "shuffle", "sequential", "random"]),
    "active_sessions": INTS,
    "tokenizer": st.sampled_from(["deepseek"] * 5 + [""]),
    "languages": st.sampled_from([[]] * 4 + [["English"], "English"]),
    "max_turns": INTS,
}
DISTS = st.one_of(
    st.fixed_dictionaries({"dist": st.just("fixed"), "value": INTS}),
    st.fixed_dictionaries({"dist": st.just("uniform"), "min": INTS, "max": INTS}),
    st.fixed_dictionaries({"dist": st.just("lognormal"), "mean": NUMBERS, "sigma": NUMBERS},
                          optional={"min": INTS, "max": INTS}),
    st.fixed_dictionaries({"dist": st.sampled_from(["normal", "fixed"])}),
)
SYNTHETIC = st.fixed_dictionaries({}, optional={
    "input": DISTS, "output": DISTS, "prefix_groups": INTS, "prefix_len": INTS,
    "num_requests": st.integers(1, 30)})
ARRIVAL_VALUES = {
    "pattern": st.sampled_from(["poisson", "gamma", "constant", "burst", "replay", "bursty"]),
    "rate": NUMBERS, "burstiness": NUMBERS, "peak_rate": NUMBERS, "base_rate": NUMBERS,
    "on_s": NUMBERS, "off_s": NUMBERS, "time_scale": NUMBERS, "target_rate": NUMBERS,
}


@settings(max_examples=300, deadline=None)
@given(workload=st.fixed_dictionaries({"source": WORKLOAD_VALUES["source"]},
                                      optional={**{k: v for k, v in WORKLOAD_VALUES.items() if k != "source"},
                                                "synthetic": SYNTHETIC}),
       arrivals=st.fixed_dictionaries({}, optional=ARRIVAL_VALUES))
def test_made_up_tables_get_the_same_answer(workload, arrivals):
    if workload["source"] == "synthetic":
        workload.setdefault("synthetic", {})["num_requests"] = 20  # keep build_trace cheap
        if arrivals.get("pattern") == "replay":
            arrivals["pattern"] = "poisson"  # replay of synthetic data is rejected either way
    assert via_workload(workload, arrivals) == via_scenario(workload, arrivals)
