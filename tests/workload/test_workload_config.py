"""The [workload] and [arrivals] tables: defaults, and errors that name the bad key."""
from __future__ import annotations

import math

import pytest

from workload.config import (
    ARRIVAL_DEFAULTS,
    SYNTHETIC_DEFAULTS,
    WORKLOAD_DEFAULTS,
    ArrivalSpec,
    WorkloadSpec,
)


def test_defaults_are_the_agreed_ones():
    spec = WorkloadSpec.from_mapping({"source": "sharegpt"})
    assert spec.tokenizer == "deepseek" and spec.block_size == 16
    assert spec.dataset == "allenai/WildChat-1M" and spec.split == "train"
    assert spec.order == "interleave" and spec.active_sessions == 32
    f = spec.filters
    assert (f.languages, f.exclude_toxic, f.exclude_redacted, f.max_turns) == ((), True, False, 0)
    assert (f.min_input_len, f.max_input_len, f.min_output_len, f.max_output_len) == (1, 0, 1, 0)
    assert spec.synthetic.num_requests == 10000 and spec.synthetic.prefix_groups == 0
    arr = ArrivalSpec.from_mapping({})
    assert arr.as_dict() == ARRIVAL_DEFAULTS


def test_unknown_workload_key_names_it_and_the_allowed_ones():
    with pytest.raises(ValueError) as err:
        WorkloadSpec.from_mapping({"source": "sharegpt", "block_sise": 16})
    msg = str(err.value)
    assert "'block_sise'" in msg and "[workload]" in msg
    assert all(k in msg for k in WORKLOAD_DEFAULTS)


def test_unknown_arrival_and_synthetic_keys():
    with pytest.raises(ValueError, match=r"\[arrivals\].*'burstyness'.*allowed keys: .*burstiness"):
        ArrivalSpec.from_mapping({"burstyness": 2})
    with pytest.raises(ValueError, match=r"synthetic.*'groups'"):
        WorkloadSpec.from_mapping({"source": "synthetic", "synthetic": {"groups": 3}})
    assert set(SYNTHETIC_DEFAULTS) == {"input", "output", "prefix_groups", "prefix_len", "num_requests"}


def test_source_is_required_and_checked():
    with pytest.raises(ValueError, match=r"source is required.*'sharegpt'"):
        WorkloadSpec.from_mapping({})
    with pytest.raises(ValueError, match=r"source must be one of .*'wildchat'.*got 'lmsys'"):
        WorkloadSpec.from_mapping({"source": "lmsys"})


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("block_size", 0, "block_size must be an integer >= 1"),
        ("block_size", 16.0, "block_size must be an integer"),
        ("block_size", True, "block_size must be an integer"),
        ("exclude_toxic", "yes", "exclude_toxic must be true or false"),
        ("languages", "English", "languages must be a list"),
        ("max_input_len", -1, "max_input_len must be an integer >= 0"),
        ("order", "random", "order must be one of 'interleave', 'shuffle', 'sequential'"),
        ("active_sessions", 0, "active_sessions must be an integer >= 1"),
        ("path", 3, "path must be a string"),
    ],
)
def test_bad_workload_values(key, value, fragment):
    with pytest.raises(ValueError, match=fragment):
        WorkloadSpec.from_mapping({"source": "sharegpt", key: value})


def test_min_above_max_is_rejected():
    with pytest.raises(ValueError, match=r"max_output_len \(10\) must be 0 \(none\) or >= .*min_output_len \(20\)"):
        WorkloadSpec.from_mapping({"source": "sharegpt", "min_output_len": 20, "max_output_len": 10})


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("pattern", "bursty", "pattern must be one of 'poisson', 'gamma', 'constant', 'burst', 'replay'"),
        ("rate", 0, "rate must be a number > 0"),
        ("rate", "fast", "rate must be a number"),
        ("burstiness", -1.0, "burstiness must be a number > 0"),
        ("off_s", -5, "off_s must be a number >= 0"),
        ("rate", math.inf, "rate must be a finite number"),
    ],
)
def test_bad_arrival_values(key, value, fragment):
    with pytest.raises(ValueError, match=fragment):
        ArrivalSpec.from_mapping({key: value})


def test_infinite_burstiness_is_allowed_and_replay_scaling_is_exclusive():
    assert math.isinf(ArrivalSpec.from_mapping({"pattern": "gamma", "burstiness": math.inf}).burstiness)
    with pytest.raises(ValueError, match="either time_scale .* or target_rate"):
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
    with pytest.raises(ValueError, match=r"input \(dist = 'uniform'\) is missing key\(s\): max"):
        WorkloadSpec.from_mapping({"source": "synthetic", "synthetic": {"input": {"dist": "uniform", "min": 1}}})
    with pytest.raises(ValueError, match=r"dist = 'fixed'.*'mean'.*allowed keys: dist, value"):
        WorkloadSpec.from_mapping({"source": "synthetic", "synthetic": {"input": {"dist": "fixed", "value": 1, "mean": 3}}})
    with pytest.raises(ValueError, match=r"dist must be one of 'fixed', 'uniform', 'lognormal'"):
        WorkloadSpec.from_mapping({"source": "synthetic", "synthetic": {"input": {"dist": "normal"}}})
    with pytest.raises(ValueError, match="prefix_groups and prefix_len must both be"):
        WorkloadSpec.from_mapping({"source": "synthetic", "synthetic": {"prefix_groups": 2}})
