"""The ``/metrics`` parser: vLLM's exposition text -> what a router sees."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from live.transport.prometheus import (
    MetricsParseError, iter_samples, parse_scraped_metrics, sum_by_name,
)

# Lines as vLLM's /metrics serves them (captured from vLLM serving Qwen3-0.6B, with
# the HELP/TYPE lines prometheus_client writes and a second engine added).
VLLM_TEXT = (Path(__file__).parent / "data" / "vllm_metrics.txt").read_text()


def test_real_vllm_text_sums_engines_and_averages_kv_usage():
    m = parse_scraped_metrics(VLLM_TEXT)
    assert m.running == 3.0 + 2.0
    assert m.waiting == 4.0 + 0.0  # not the *_by_reason series, which shares the prefix
    assert m.kv_usage == pytest.approx((0.25 + 0.75) / 2)
    assert m.prefix_queries == 80.0 + 120.0  # the _created samples are timestamps, not counts
    assert m.prefix_hits == 32.0 + 48.0
    assert m.preemptions == 1.0


def test_missing_metrics_are_nan_not_zero():
    m = parse_scraped_metrics('vllm:num_requests_running{engine="0"} 2\n')
    assert m.running == 2.0
    for name in ("waiting", "kv_usage", "prefix_queries", "prefix_hits", "preemptions"):
        assert math.isnan(getattr(m, name)), name


def test_older_vllm_names_are_read_when_current_ones_are_absent():
    text = ('vllm:gpu_cache_usage_perc{engine="0",model_name="m"} 0.5\n'
            'vllm:gpu_prefix_cache_queries_total{engine="0",model_name="m"} 7\n'
            'vllm:gpu_prefix_cache_hits_total{engine="0",model_name="m"} 3\n')
    m = parse_scraped_metrics(text)
    assert (m.kv_usage, m.prefix_queries, m.prefix_hits) == (0.5, 7.0, 3.0)


def test_current_name_wins_over_the_deprecated_one():
    text = ('vllm:gpu_cache_usage_perc{engine="0"} 0.9\n'
            'vllm:kv_cache_usage_perc{engine="0"} 0.1\n')
    assert parse_scraped_metrics(text).kv_usage == 0.1


def test_counter_without_total_suffix_is_read():
    assert parse_scraped_metrics("vllm:prefix_cache_hits 12\n").prefix_hits == 12.0


def test_labels_with_escapes_braces_and_spaces():
    line = r'm{a="x\"}y",b="line\nnext",c="with space"} 4.5 1700000000000'
    (name, labels, value), = iter_samples(line)
    assert name == "m"
    assert labels == {"a": 'x"}y', "b": "line\nnext", "c": "with space"}
    assert value == 4.5


def test_special_values():
    vals = [v for _, _, v in iter_samples("a NaN\nb +Inf\nc -Inf\nd 1e3\n")]
    assert math.isnan(vals[0]) and vals[1] == math.inf and vals[2] == -math.inf and vals[3] == 1000


@pytest.mark.parametrize("line", ["vllm:x{a=\"1\"}", "vllm:x{a=\"1\" 3", "vllm:x abc", "novalue"])
def test_malformed_line_names_its_number(line):
    with pytest.raises(MetricsParseError, match="line 2"):
        list(iter_samples("ok 1\n" + line + "\n"))


_label_value = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=8)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_label_value, st.floats(-1e6, 1e6, allow_nan=False)), min_size=1,
                max_size=6))
def test_sum_over_label_sets_matches_the_values(series):
    lines = []
    for i, (label, value) in enumerate(series):
        esc = label.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        lines.append(f'vllm:num_requests_running{{engine="{i}",model_name="{esc}"}} {value!r}')
    text = "\n".join(lines) + "\n"
    total, count = sum_by_name(text)["vllm:num_requests_running"]
    assert count == len(series)
    assert total == pytest.approx(sum(v for _, v in series), abs=1e-6)
    parsed = [labels["model_name"] for _, labels, _ in iter_samples(text)]
    assert parsed == [label for label, _ in series]
