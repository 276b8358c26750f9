"""The [workload] and [arrivals] tables: defaults, and errors that name the bad key."""
from __future__ import annotations

import dataclasses
import math

import pytest

from workload.config import (
    ARRIVAL_DEFAULTS, SYNTHETIC_DEFAULTS, WORKLOAD_DEFAULTS, ArrivalSpec, FixedLength,
    LognormalLength, WorkloadSpec,
)
from workload.tables import SchemaError


def test_defaults_are_the_agreed_ones():
    spec = WorkloadSpec.from_mapping({"source": "sharegpt"})
    assert spec.tokenizer == "deepseek" and spec.block_size == 16
    assert spec.dataset == "allenai/WildChat-1M" and spec.split == "train"
    assert spec.order == "interleave" and spec.active_sessions == 32
    f = spec.filters
    assert (f.languages, f.exclude_toxic, f.exclude_redacted, f.max_turns) == ((), True, False, 0)
    assert (f.min_input_len, f.max_input_len, f.min_output_len, f.max_output_len) == (1, 0, 1, 0)
    assert spec.synthetic.num_requests == 10000 and spec.synthetic.prefix_groups == 0
    # vllm bench serve's random dataset: 1024 prompt tokens, 128 output tokens
    assert spec.synthetic.input == FixedLength(value=1024)
    assert spec.synthetic.output == FixedLength(value=128)
    arr = ArrivalSpec.from_mapping({})
    assert arr.as_dict() == ARRIVAL_DEFAULTS == {
        "pattern": "poisson", "rate": 1.0, "burstiness": 1.0, "base_rate": 1.0, "peak_rate": 10.0,
        "on_s": 10.0, "off_s": 30.0, "time_scale": 1.0, "target_rate": 0.0, "replay_window": "start",
        "concurrency": 0, "sessions": "closed",
        "think_time": {"dist": "lognormal", "mean": 211.5, "sigma": 0.98, "max": 0.0}}
    assert WORKLOAD_DEFAULTS["source"] is None and WORKLOAD_DEFAULTS["min_input_len"] == 1


def test_a_spec_written_out_is_read_back_unchanged():
    spec = WorkloadSpec.from_mapping({
        "source": "synthetic", "exclude_toxic": False, "max_input_len": 300,
        "synthetic": {"input": {"dist": "lognormal", "mean": 200, "sigma": 0.5},
                      "output": {"dist": "uniform", "min": 4, "max": 9}, "prefix_groups": 2,
                      "prefix_len": 16}})
    table = dataclasses.asdict(spec)
    assert table["synthetic"]["input"] == {"dist": "lognormal", "mean": 200.0, "sigma": 0.5,
                                           "min": 1, "max": 0}
    assert WorkloadSpec.from_mapping(table) == spec
    assert WorkloadSpec.from_mapping(spec) == spec


def test_unknown_workload_key_names_it_and_the_allowed_ones():
    with pytest.raises(SchemaError) as err:
        WorkloadSpec.from_mapping({"source": "sharegpt", "block_sise": 16})
    msg = str(err.value)
    assert err.value.key == "workload.block_sise" and "did you mean 'block_size'" in msg
    assert all(k in msg for k in WORKLOAD_DEFAULTS)


def test_unknown_arrival_and_synthetic_keys():
    with pytest.raises(ValueError, match=r"arrivals\.burstyness: unknown key; did you mean 'burstiness'"):
        ArrivalSpec.from_mapping({"burstyness": 2})
    with pytest.raises(ValueError, match=r"workload\.synthetic\.groups: unknown key"):
        WorkloadSpec.from_mapping({"source": "synthetic", "synthetic": {"groups": 3}})
    assert set(SYNTHETIC_DEFAULTS) == {"input", "output", "prefix_groups", "prefix_len", "num_requests", "turns"}


def test_source_is_required_and_checked():
    with pytest.raises(ValueError, match=r"workload\.source: missing required key; expected one of 'sharegpt'"):
        WorkloadSpec.from_mapping({})
    with pytest.raises(ValueError, match=r"workload\.source: unknown value 'lmsys'.*'wildchat'"):
        WorkloadSpec.from_mapping({"source": "lmsys"})


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("block_size", 0, "got 0, out of range; expected an integer >= 1"),
        ("block_size", 16.0, "got float 16.0; expected an integer >= 1"),
        ("block_size", True, "got boolean True; expected an integer"),
        ("exclude_toxic", "yes", "expected true or false"),
        ("languages", "English", "expected a list of strings"),
        ("max_input_len", -1, "expected an integer >= 0"),
        ("max_input_len", [100, 200], "got a list"),  # a grid axis only in a scenario
        ("order", "random", "expected one of 'interleave', 'shuffle', 'sequential'"),
        ("active_sessions", 0, "expected an integer >= 1"),
        ("path", 3, "expected a string"),
        ("tokenizer", "", "expected a non-empty string"),
    ],
)
def test_bad_workload_values(key, value, fragment):
    with pytest.raises(SchemaError, match=fragment) as err:
        WorkloadSpec.from_mapping({"source": "sharegpt", key: value})
    assert err.value.key == f"workload.{key}"


def test_min_above_max_is_rejected_and_zero_minimum_accepted():
    with pytest.raises(ValueError, match=r"workload\.max_output_len: 10 is below min_output_len = 20"):
        WorkloadSpec.from_mapping({"source": "sharegpt", "min_output_len": 20, "max_output_len": 10})
    assert WorkloadSpec.from_mapping({"source": "sharegpt", "min_input_len": 0}).filters.min_input_len == 0


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("pattern", "bursty", "expected one of 'poisson', 'gamma', 'constant', 'burst', 'replay'"),
        ("pattern", "poison", "did you mean 'poisson'"),
        ("rate", 0, "expected a number > 0"),
        ("rate", "fast", "got string 'fast'; expected a number"),
        ("burstiness", -1.0, "expected a number > 0"),
        ("burstiness", -math.inf, "got -inf"),
        ("off_s", -5, "expected a number >= 0"),
        ("rate", math.inf, "got inf; expected a number > 0"),
        ("rate", math.nan, "got nan"),
    ],
)
def test_bad_arrival_values(key, value, fragment):
    with pytest.raises(SchemaError, match=fragment) as err:
        ArrivalSpec.from_mapping({key: value})
    assert err.value.key == f"arrivals.{key}"


def test_infinite_burstiness_is_allowed_and_replay_scaling_is_exclusive():
    assert math.isinf(ArrivalSpec.from_mapping({"pattern": "gamma", "burstiness": math.inf}).burstiness)
    with pytest.raises(ValueError, match="give time_scale .* or target_rate .* not both"):
        ArrivalSpec.from_mapping({"pattern": "replay", "time_scale": 2.0, "target_rate": 3.0})


def test_length_distributions():
    spec = WorkloadSpec.from_mapping({
        "source": "synthetic",
        "synthetic": {
            "input": {"dist": "uniform", "min": 10, "max": 20},
            "output": {"dist": "lognormal", "mean": 100.0, "sigma": 0.5, "max": 400},
        },
    })
    assert (spec.synthetic.input.min, spec.synthetic.input.max) == (10, 20)
    assert spec.synthetic.output.mean == 100.0 and spec.synthetic.output.max == 400
    syn = lambda dist: {"source": "synthetic", "synthetic": {"input": dist}}  # noqa: E731
    with pytest.raises(ValueError, match=r"input\.max: missing required key for dist = 'uniform'"):
        WorkloadSpec.from_mapping(syn({"dist": "uniform", "min": 1}))
    with pytest.raises(ValueError, match=r"input\.mean: unknown key; allowed keys here: dist, value"):
        WorkloadSpec.from_mapping(syn({"dist": "fixed", "value": 1, "mean": 3}))
    with pytest.raises(ValueError, match=r"input\.dist: unknown value 'normal'.*'fixed', 'uniform', 'lognormal'"):
        WorkloadSpec.from_mapping(syn({"dist": "normal"}))
    with pytest.raises(ValueError, match=r"input\.max: 3 is below min = 5"):
        WorkloadSpec.from_mapping(syn({"dist": "lognormal", "mean": 9, "sigma": 1, "min": 5, "max": 3}))
    with pytest.raises(ValueError, match=r"synthetic\.prefix_len: is 0 but prefix_groups > 0"):
        WorkloadSpec.from_mapping({"source": "synthetic", "synthetic": {"prefix_groups": 2}})


def test_lognormal_edges_documented_as_meaningful():
    """``sigma = 0`` draws the mean every time; ``max = 0`` leaves the lengths unbounded."""
    import numpy as np

    rng = np.random.default_rng(0)
    assert (LognormalLength(mean=300.0, sigma=0.0).draw(50, rng) == 300).all()
    wide = LognormalLength(mean=300.0, sigma=2.0, max=0).draw(2000, rng)
    assert wide.max() > 3000 and wide.min() >= 1
    capped = LognormalLength(mean=300.0, sigma=2.0, max=500).draw(2000, rng)
    assert capped.max() == 500
