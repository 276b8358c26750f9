"""``benchmarks/sim_speed.py``'s small rules: strategy specs and the overload verdict.

The benchmark itself is run by hand (docs/performance.md); these check the parts
that decide what a row means.
"""
from __future__ import annotations

import numpy as np
import pytest
from benchmark_scripts import load_benchmark


def bench():
    return load_benchmark("sim_speed")


def test_strategy_specs_carry_typed_parameters():
    parse = bench().parse_strategy
    assert parse("least_load") == ("least_load", {})
    assert parse("cache_aware:index_blocks=0,preset=vllm_router") == (
        "cache_aware", {"index_blocks": 0, "preset": "vllm_router"})
    name, params = parse("kv_cost:temperature=0.5, index=approximate")
    assert name == "kv_cost" and params == {"temperature": 0.5, "index": "approximate"}
    assert isinstance(params["temperature"], float)
    assert parse("x:flag=true")[1] == {"flag": True}
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        parse("cache_aware:oops")


def test_first_and_last_fifth_medians_and_the_overload_verdict():
    b = bench()
    arrival = np.arange(10, dtype=float)  # 0..9 s: the fifths are [0, 1.8] and [7.2, 9]
    ttft = np.array([0.1, 0.3, 5, 5, 5, 5, 5, 5, 2.0, 4.0])
    first, last = b.ttft_first_and_last_fifth(arrival, ttft)
    assert (first, last) == (0.2, 3.0)
    assert b.overloaded(first, last)  # 3.0 > 2 * 0.2 + 0.5
    assert not b.overloaded(0.2, 0.9)  # 0.9 == the bound: not over it
    assert b.overloaded(0.2, 0.91)
