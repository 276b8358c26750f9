"""prompt_token_ids keeps the trace's prefix-sharing structure; length buckets."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workload import build_trace
from workload.buckets import bucket_index, bucket_labels, bucket_stats, format_bucket_table
from workload.hashing import block_hash_chain
from workload.tokens import prompt_token_ids
from workload_helpers import equality_structure

SYNTH = {
    "source": "synthetic",
    "synthetic": {"num_requests": 200, "prefix_groups": 4, "prefix_len": 70,
                  "input": {"dist": "uniform", "min": 1, "max": 90}},
}


@pytest.fixture(scope="module")
def traces(session_cache):
    cache = session_cache
    chat = build_trace({"source": "sharegpt", "max_conversations": 40}, {}, seed=5, num_requests=120,
                       cache_dir=cache)
    synth = build_trace(SYNTH, {}, seed=5, num_requests=150, cache_dir=cache)
    return {"chat": chat, "synthetic": synth}


@pytest.mark.parametrize("kind", ["chat", "synthetic"])
def test_rehashing_the_ids_gives_the_same_sharing_structure(traces, kind):
    t = traces[kind]
    ids = [prompt_token_ids(t, i, vocab_size=32_000) for i in range(len(t))]
    rehashed = [block_hash_chain(x, t.block_size) for x in ids]
    trace_chains = [t.hashes(i) for i in range(len(t))]
    assert [len(x) for x in ids] == t.input_len.tolist()
    assert equality_structure(rehashed) == equality_structure(trace_chains)
    # the structure is not trivial: some blocks are shared between requests
    flat = np.concatenate(trace_chains)
    assert len(np.unique(flat)) < len(flat)


def test_ids_are_deterministic_and_in_range(traces):
    t = traces["chat"]
    a = prompt_token_ids(t, 3, 1000, reserved_low=10, reserved_high=20)
    assert a == prompt_token_ids(t, 3, 1000, reserved_low=10, reserved_high=20)
    assert min(a) >= 10 and max(a) < 980
    with pytest.raises(ValueError, match="no usable token ids"):
        prompt_token_ids(t, 0, 100, reserved_low=50, reserved_high=50)


@settings(max_examples=30, deadline=None)
@given(vocab=st.integers(64, 300_000), low=st.integers(0, 30), high=st.integers(0, 30), i=st.integers(0, 149))
def test_ids_respect_any_vocabulary(traces, vocab, low, high, i):
    t = traces["synthetic"]
    ids = prompt_token_ids(t, i, vocab, reserved_low=low, reserved_high=high)
    assert len(ids) == t.input_len[i]
    assert all(low <= x < vocab - high for x in ids)


def test_bucket_boundaries():
    assert bucket_labels() == ["<128", "128-511", "512-1023", ">=1024"]
    lens = np.array([1, 127, 128, 511, 512, 1023, 1024, 50_000])
    assert bucket_index(lens).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert bucket_labels([100]) == ["<100", ">=100"]
    for bad in ([], [0, 5], [10, 10], [20, 10]):
        with pytest.raises(ValueError, match="strictly increasing"):
            bucket_labels(bad)


def test_bucket_stats_on_a_hand_example():
    inp = np.array([10, 20, 30, 200, 300, 2000])
    out = np.array([1, 2, 3, 40, 60, 500])
    rows = {r.label: r for r in bucket_stats(inp, out)}
    assert rows["<128"].count == 3 and rows["<128"].input_mean == 20 and rows["<128"].output_p50 == 2
    assert rows["128-511"].count == 2 and rows["128-511"].share == pytest.approx(2 / 6)
    assert rows["512-1023"].count == 0
    assert rows[">=1024"].output_mean == 500
    assert rows["all"].count == 6 and rows["all"].share == 1.0
    table = format_bucket_table(list(rows.values()))
    assert "512-1023" in table and "33.3%" in table and table.splitlines()[0].startswith("bucket")
