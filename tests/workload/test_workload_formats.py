"""Trace formats other tools read: Mooncake JSONL and vLLM's custom dataset, both ways; Azure 2024."""
from __future__ import annotations

import json
import math
from datetime import datetime, timezone

import numpy as np
import pytest

from workload import build_trace
from workload.formats import export_mooncake, export_vllm_custom, hash_ids, word_list
from workload.sources.azure import read_trace as read_azure
from workload.trace import Trace
from workload_helpers import equality_structure

SESSIONS = {"source": "synthetic", "synthetic": {
    "turns": {"dist": "uniform", "min": 1, "max": 4}, "num_requests": 300,
    "input": {"dist": "uniform", "min": 10, "max": 90}, "output": {"dist": "uniform", "min": 5, "max": 60},
    "prefix_groups": 3, "prefix_len": 48}}


def closed_trace(n=60, seed=0):
    return build_trace(SESSIONS, {"rate": 5.0, "think_time": {"dist": "exponential", "mean": 2.0}},
                       seed=seed, num_requests=n, cache_dir=False)


def by_key(trace):
    return {(str(c), int(t)): i for i, (c, t) in enumerate(zip(trace.conversation_id, trace.turn))}


def test_hash_ids_name_equal_prefixes_equally_and_give_partial_blocks_their_own():
    """Three prompts by hand (block size 4): A = 10 tokens, B shares A's first block, C = A's
    first two blocks. Ids count up in order of first appearance."""
    chains = [[11, 12], [11, 21, 22], [11, 12]]
    n = 3
    offsets = np.array([0, 2, 5, 7])
    t = Trace(np.arange(n), np.array(["a", "b", "c"], dtype=object), np.zeros(n, np.int32),
              np.array([10, 12, 8], np.int32), np.ones(n, np.int32), np.zeros(n), np.full(n, np.nan),
              offsets, np.array([h for c in chains for h in c], dtype=np.uint64), block_size=4)
    assert hash_ids(t) == [[0, 1, 2], [0, 3, 4], [0, 1]]
    # Blocks of 8 tokens are named by their last 4-token block: A's first is 12, B's is 21.
    assert hash_ids(t, 8) == [[0, 1], [2, 3], [0]]
    with pytest.raises(ValueError, match="multiple of the trace's block_size 4"):
        hash_ids(t, 6)


def test_a_mooncake_export_round_trips(tmp_path):
    trace = closed_trace()
    path = tmp_path / "trace.jsonl"
    assert export_mooncake(trace, path) == len(trace)
    first = json.loads(path.read_text().splitlines()[0])
    assert {"timestamp", "input_length", "output_length", "hash_ids", "session_id", "turn"} <= set(first)
    back = build_trace({"source": "mooncake", "path": str(path), "hash_block_size": 16},
                       {"pattern": "replay", "think_time": {"dist": "data"}}, seed=0,
                       num_requests=len(trace), cache_dir=False)
    assert len(back) == len(trace) and back.meta["sessions"] == "closed"
    src, dst = by_key(trace), by_key(back)
    assert src.keys() == dst.keys()
    rows_a = [src[k] for k in sorted(src)]
    rows_b = [dst[k] for k in sorted(src)]
    for col in ("input_len", "output_len"):
        assert np.array_equal(getattr(trace, col)[rows_a], getattr(back, col)[rows_b])
    assert equality_structure([trace.hashes(i) for i in rows_a]) == \
        equality_structure([back.hashes(i) for i in rows_b])
    assert np.allclose(trace.think_s[rows_a], back.think_s[rows_b], atol=1e-6, equal_nan=True)
    start = trace.arrival_s.min()
    assert np.allclose(trace.arrival_s[rows_a] - start, back.arrival_s[rows_b], atol=1e-5)


def test_a_coarse_mooncake_export_reads_with_the_shipped_default_block(tmp_path):
    trace = build_trace({"source": "sharegpt", "max_conversations": 30}, {"rate": 4.0},
                        seed=1, num_requests=50)
    path = tmp_path / "coarse.jsonl"
    export_mooncake(trace, path, hash_block_size=512)
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        assert len(rec["hash_ids"]) == math.ceil(rec["input_length"] / 512)
    back = build_trace({"source": "mooncake", "path": str(path)},
                       {"pattern": "replay", "sessions": "open"}, seed=0, num_requests=len(trace),
                       cache_dir=False)
    src, dst = by_key(trace), by_key(back)
    # Two prompts share an engine block after the round trip iff they shared the whole
    # 512-token block around it before: sharing shrinks to whole coarse blocks, no more.
    for (a, b) in zip(list(src)[:-1], list(src)[1:]):
        ha, hb = trace.hashes(src[a]), trace.hashes(src[b])
        common = next((k for k in range(min(len(ha), len(hb))) if ha[k] != hb[k]), min(len(ha), len(hb)))
        ba, bb = back.hashes(dst[a]), back.hashes(dst[b])
        common_back = next((k for k in range(min(len(ba), len(bb))) if ba[k] != bb[k]),
                           min(len(ba), len(bb)))
        assert common_back == (common // 32) * 32


def test_a_vllm_custom_export_round_trips_through_the_tokenizer(tmp_path):
    trace = closed_trace(40, seed=3)
    path = tmp_path / "custom.jsonl"
    export_vllm_custom(trace, path)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert all(isinstance(r["prompt"], str) and isinstance(r["output_tokens"], int) for r in lines)
    words, ids = word_list("deepseek")
    assert len(words) > 1000 and all(w.startswith(" ") for w in words[:50])
    back = build_trace({"source": "vllm_custom", "path": str(path)},
                       {"pattern": "replay", "think_time": {"dist": "data"}}, seed=0,
                       num_requests=len(trace), cache_dir=False)
    src, dst = by_key(trace), by_key(back)
    assert src.keys() == dst.keys()
    rows_a = [src[k] for k in sorted(src)]
    rows_b = [dst[k] for k in sorted(src)]
    # Every prompt re-tokenizes to exactly input_len tokens, and shares blocks as before.
    assert np.array_equal(trace.input_len[rows_a], back.input_len[rows_b])
    assert np.array_equal(trace.output_len[rows_a], back.output_len[rows_b])
    assert equality_structure([trace.hashes(i) for i in rows_a]) == \
        equality_structure([back.hashes(i) for i in rows_b])
    assert np.allclose(trace.think_s[rows_a], back.think_s[rows_b], atol=1e-6, equal_nan=True)


def test_import_errors_name_the_line_and_the_field(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi there"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: 'output_tokens' must be an integer >= 1"):
        build_trace({"source": "vllm_custom", "path": str(bad)}, {}, seed=0, num_requests=1,
                    cache_dir=False)
    with pytest.raises(ValueError, match="source 'vllm_custom' reads a file"):
        build_trace({"source": "vllm_custom"}, {}, seed=0, num_requests=1, cache_dir=False)
    short = tmp_path / "short.jsonl"
    short.write_text('{"timestamp": 0, "input_length": 40, "output_length": 2, "hash_ids": [1, 2]}\n')
    with pytest.raises(ValueError, match="set \\[workload\\] hash_block_size"):
        build_trace({"source": "mooncake", "path": str(short), "hash_block_size": 16}, {},
                    seed=0, num_requests=1, cache_dir=False)


def _epoch(*args) -> float:
    return datetime(*args, tzinfo=timezone.utc).timestamp()


def test_the_azure_2024_format_and_inference_perfs_headerless_variant_parse(tmp_path):
    v2024 = tmp_path / "AzureLLMInferenceTrace_conv_1week.csv"
    v2024.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                     "2024-05-12 00:00:00+00:00,584,3\n"
                     "2024-05-12 00:00:00.041683+00:00,862,38\n"
                     "2024-05-12 00:00:01.158932+00:00,1569,3\n")
    cols = read_azure(v2024)
    assert cols["timestamp_s"].tolist() == [_epoch(2024, 5, 12), _epoch(2024, 5, 12, 0, 0, 0, 41683),
                                            _epoch(2024, 5, 12, 0, 0, 1, 158932)]
    assert cols["input_len"].tolist() == [584, 862, 1569] and cols["output_len"].tolist() == [3, 38, 3]
    assert len(read_azure(v2024, limit=2)["input_len"]) == 2
    headerless = tmp_path / "ip.csv"
    headerless.write_text("2023-11-16T18:15:46.68059Z,374,44\n2023-11-16 18:15:50.995169,396,109\n")
    cols = read_azure(headerless)
    assert cols["timestamp_s"].tolist() == [_epoch(2023, 11, 16, 18, 15, 46, 680590),
                                            _epoch(2023, 11, 16, 18, 15, 50, 995169)]
    t = build_trace({"source": "azure", "path": str(v2024)}, {"pattern": "replay"}, seed=0,
                    num_requests=3, cache_dir=False)
    assert np.allclose(t.arrival_s, [0.0, 0.041683, 1.158932])
