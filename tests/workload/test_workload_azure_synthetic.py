"""The Azure trace (real CSV from ../shared/data) and synthetic requests."""
from __future__ import annotations

import gzip
import math

import numpy as np
import pandas as pd
import pytest

from workload.config import WorkloadSpec
from workload.loader import load_pool
from workload.sources.azure import packaged_trace_path, synthetic_token_ids
from workload.hashing import block_hash_chain
from workload_helpers import AZURE_CSV, SHARED_AZURE_CSV


@pytest.fixture(scope="module")
def azure_pool(session_cache):
    # default filters keep every row: the trace's minimum lengths are 2 and 7 tokens
    return load_pool(WorkloadSpec.from_mapping({"source": "azure", "path": str(AZURE_CSV)}), cache_dir=session_cache)


def test_azure_rows_lengths_and_timestamps(azure_pool):
    df = pd.read_csv(AZURE_CSV)
    t = azure_pool.trace
    assert len(t) == len(df)
    assert t.input_len.tolist() == df["ContextTokens"].tolist()
    assert t.output_len.tolist() == df["GeneratedTokens"].tolist()
    first = pd.Timestamp(df["TIMESTAMP"].iloc[0], tz="UTC").timestamp()
    assert t.timestamp_s[0] == pytest.approx(first, abs=1e-6)
    last = pd.Timestamp(df["TIMESTAMP"].iloc[-1], tz="UTC").timestamp()
    assert t.timestamp_s[-1] - t.timestamp_s[0] == pytest.approx(last - first, abs=1e-5)
    assert np.all(np.diff(t.timestamp_s) >= 0)
    assert (t.turn == 0).all() and azure_pool.n_conversations == len(df)


def test_azure_requests_have_their_own_deterministic_chains(azure_pool):
    t = azure_pool.trace
    bs = t.block_size
    assert np.array_equal(np.diff(t.hash_offsets), t.input_len // bs)
    for i in (0, 17, len(t) - 1):
        assert np.array_equal(t.hashes(i), block_hash_chain(synthetic_token_ids(i, int(t.input_len[i])), bs))
    firsts = t.block_hashes[t.hash_offsets[:-1][t.input_len >= bs]]
    assert len(np.unique(firsts)) == len(firsts)  # no prefix shared between requests


@pytest.mark.skipif(not SHARED_AZURE_CSV.is_file(), reason="no ../shared/data copy to compare with")
def test_packaged_copy_is_the_shared_csv():
    with gzip.open(packaged_trace_path(), "rb") as fh:
        assert fh.read() == SHARED_AZURE_CSV.read_bytes()


def test_packaged_copy_names_its_licence_and_source():
    readme = packaged_trace_path().with_name("README.md").read_text(encoding="utf-8")
    assert "CC-BY-4.0" in readme and "Splitwise" in readme and "ISCA 2024" in readme


def test_azure_default_path_and_length_filters():
    pool = load_pool(WorkloadSpec.from_mapping({"source": "azure", "max_input_len": 300, "min_output_len": 100}),
                     cache_dir=False)
    t = pool.trace
    df = pd.read_csv(AZURE_CSV)
    keep = (df["ContextTokens"] <= 300) & (df["GeneratedTokens"] >= 100)
    assert len(t) == int(keep.sum()) == len(df) - pool.meta["rows_filtered_length"]
    assert pool.meta["path"].endswith("azure_llm_inference_conv_2023.csv.gz")


def test_azure_bad_csv(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("time,prompt,output\n1,2,3\n")
    with pytest.raises(ValueError, match="missing column.*TIMESTAMP, ContextTokens, GeneratedTokens"):
        load_pool(WorkloadSpec.from_mapping({"source": "azure", "path": str(bad)}), cache_dir=False)


def _synthetic(seed=0, **syn):
    return load_pool(WorkloadSpec.from_mapping({"source": "synthetic", "synthetic": syn}), seed=seed)


def test_synthetic_distributions():
    fixed = _synthetic(num_requests=50, input={"dist": "fixed", "value": 77}).trace
    assert (fixed.input_len == 77).all() and (fixed.output_len == 128).all()
    uni = _synthetic(num_requests=3000, input={"dist": "uniform", "min": 10, "max": 20}).trace
    assert uni.input_len.min() == 10 and uni.input_len.max() == 20
    assert uni.input_len.mean() == pytest.approx(15, abs=0.3)
    logn = _synthetic(num_requests=20000, input={"dist": "fixed", "value": 8},
                      output={"dist": "lognormal", "mean": 300.0, "sigma": 0.6}).trace
    # E[lognormal] = 300 by construction; its sd is 300*sqrt(exp(0.36)-1) ~ 190: 5 standard errors
    assert abs(logn.output_len.mean() - 300) < 5 * 190 / math.sqrt(20000) + 0.5
    capped = _synthetic(num_requests=2000, output={"dist": "lognormal", "mean": 300.0, "sigma": 1.5,
                                                   "min": 50, "max": 400}).trace
    assert capped.output_len.min() >= 50 and capped.output_len.max() <= 400


def test_synthetic_prefix_groups_share_exactly_the_prefix_blocks():
    pool = _synthetic(seed=3, num_requests=300, prefix_groups=3, prefix_len=100,
                      input={"dist": "uniform", "min": 20, "max": 60})
    t = pool.trace
    assert t.input_len.min() >= 120 and t.input_len.max() <= 160
    shared = 100 // 16
    firsts = {tuple(t.hashes(i)[:shared]) for i in range(len(t))}
    assert len(firsts) == 3  # one prefix chain per group
    nexts = [t.hashes(i)[shared] for i in range(len(t)) if len(t.hashes(i)) > shared]
    assert len(set(nexts)) == len(nexts)  # the block holding the prefix's tail is already private


def test_synthetic_is_a_function_of_the_seed():
    a = _synthetic(seed=5, num_requests=100, input={"dist": "uniform", "min": 1, "max": 500}).trace
    b = _synthetic(seed=5, num_requests=100, input={"dist": "uniform", "min": 1, "max": 500}).trace
    c = _synthetic(seed=6, num_requests=100, input={"dist": "uniform", "min": 1, "max": 500}).trace
    assert np.array_equal(a.input_len, b.input_len) and np.array_equal(a.block_hashes, b.block_hashes)
    assert not np.array_equal(a.input_len, c.input_len)
