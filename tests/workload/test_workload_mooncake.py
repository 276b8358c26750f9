"""The Mooncake trace: 512-token ids onto engine blocks, sessions, the packaged copy."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from workload import build_trace
from workload.config import WorkloadSpec
from workload.loader import load_pool
from workload.sources.mooncake import packaged_trace_path
from workload_helpers import SHARED_DATA

SHARED = SHARED_DATA / "mooncake" / "conversation_trace.jsonl"


def write_trace(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def pool_of(path: Path, block_size: int = 16, **extra):
    spec = WorkloadSpec.from_mapping({"source": "mooncake", "path": str(path), "block_size": block_size, **extra})
    return load_pool(spec, cache_dir=False)


def rec(ts, n, ids, out=10):
    return {"timestamp": ts, "input_length": n, "output_length": out, "hash_ids": ids}


def by_turn(pool):
    t = pool.trace
    return {(t.conversation_id[i], int(t.turn[i])): t.hashes(i) for i in range(len(t))}


def test_requests_sharing_ids_share_exactly_their_engine_blocks(tmp_path):
    path = write_trace(tmp_path / "t.jsonl", [
        rec(0, 1100, [0, 1, 2]),     # 68 blocks of 16: ids 0, 1 full (64 blocks), id 2 partial (4 blocks)
        rec(1000, 1200, [0, 1, 3]),  # shares ids 0, 1: exactly 64 blocks
        rec(2000, 600, [0, 5]),      # id 5 partial: 5 full blocks (tokens 512..591)
        rec(3000, 560, [0, 5]),      # the same id 5, shorter: its 3 full blocks match
    ])
    t = pool_of(path).trace
    h = [t.hashes(i) for i in np.argsort(t.timestamp_s, kind="stable")]
    assert [len(x) for x in h] == [68, 75, 37, 35]
    assert np.array_equal(h[0][:64], h[1][:64]) and h[0][64] != h[1][64]
    assert not set(h[0][64:].tolist()) & set(h[1][64:].tolist())
    assert np.array_equal(h[2][:35], h[3]) and np.array_equal(h[2][:32], h[0][:32])
    assert len(set(np.concatenate(h).tolist())) == 68 + 11 + 5  # A, B past id 1, C past id 0
    assert np.allclose(sorted(t.timestamp_s), [0.0, 1.0, 2.0, 3.0])  # milliseconds -> seconds


def test_block_size_32_keeps_the_sharing(tmp_path):
    path = write_trace(tmp_path / "t.jsonl", [rec(0, 1100, [0, 1, 2]), rec(1, 1200, [0, 1, 3])])
    t = pool_of(path, block_size=32).trace
    a, b = t.hashes(0), t.hashes(1)
    assert len(a) == 34 and np.array_equal(a[:32], b[:32]) and a[32] != b[32]


def test_sessions_follow_the_longest_shared_run_past_the_first_id(tmp_path):
    path = write_trace(tmp_path / "t.jsonl", [
        rec(0, 1500, [0, 1, 2]),        # session A
        rec(1, 1500, [0, 7, 8]),        # only the system id in common: session B
        rec(2, 2500, [0, 1, 2, 3, 4]),  # continues A (turn 1)
        rec(3, 2000, [0, 7, 8, 9]),     # continues B
        rec(4, 3000, [0, 1, 2, 3, 4, 6]),  # continues A again (turn 2)
        rec(5, 900, [0, 1]),            # shares [0, 1] with A: a run of 2 ids, so A (turn 3)
    ])
    t = pool_of(path).trace
    order = np.argsort(t.timestamp_s, kind="stable")
    sess = [t.conversation_id[i] for i in order]
    turns = [int(t.turn[i]) for i in order]
    assert sess[0] == sess[2] == sess[4] == sess[5] and sess[1] == sess[3] and sess[0] != sess[1]
    assert turns == [0, 0, 1, 1, 2, 3]


@pytest.mark.parametrize("line, words", [
    ('{"timestamp": 0, "input_length": 10}', r"missing field\(s\) output_length, hash_ids"),
    ('{"timestamp": 0, "input_length": 1000, "output_length": 1, "hash_ids": [0]}', "fewer than input_length"),
    ('{"timestamp": -1, "input_length": 10, "output_length": 1, "hash_ids": [0]}', "timestamp must be"),
    ('{"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": ["a"]}', "hash_ids must be"),
    ("not json", "not a JSON object"),
])
def test_bad_lines_name_the_line_and_field(tmp_path, line, words):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(rec(0, 100, [0])) + "\n" + line + "\n")
    with pytest.raises(ValueError, match=words) as info:
        pool_of(path)
    assert "bad.jsonl:2" in str(info.value) or "bad.jsonl" in str(info.value)


def test_session_ids_on_some_lines_only_are_refused(tmp_path):
    with_id = {**rec(0, 100, [0]), "session_id": "a"}
    path = write_trace(tmp_path / "t.jsonl", [with_id, rec(1, 100, [1]), rec(2, 100, [2])])
    with pytest.raises(ValueError, match=r"t\.jsonl:2: no session_id, while line 1 has one \('a'\)"):
        pool_of(path)
    path = write_trace(tmp_path / "u.jsonl", [rec(0, 100, [0]), {**rec(1, 100, [1]), "session_id": 7}])
    with pytest.raises(ValueError, match=r"u\.jsonl:1: no session_id, while line 2 has one \(7\)"):
        pool_of(path)


def test_ids_that_are_not_prefix_hashes_are_refused(tmp_path):
    path = write_trace(tmp_path / "t.jsonl", [rec(0, 1500, [0, 1, 2]), rec(1, 1500, [0, 3, 2])])
    with pytest.raises(ValueError, match="follows id 3 here and id 1 elsewhere"):
        pool_of(path)


def test_block_size_must_divide_512(tmp_path):
    path = write_trace(tmp_path / "t.jsonl", [rec(0, 100, [0])])
    with pytest.raises(ValueError, match="block_size divides 512"):
        pool_of(path, block_size=48)


def test_filters_and_a_missing_file(tmp_path):
    path = write_trace(tmp_path / "t.jsonl", [rec(0, 1000, [0, 1]), rec(1, 5000, [0, 2] + list(range(3, 11)))])
    t = pool_of(path, max_input_len=4096).trace
    assert t.input_len.tolist() == [1000]
    with pytest.raises(FileNotFoundError, match="Mooncake trace"):
        pool_of(tmp_path / "nope.jsonl")


def test_replay_uses_the_trace_timestamps(tmp_path):
    path = write_trace(tmp_path / "t.jsonl", [rec(0, 100, [0]), rec(2500, 100, [0]), rec(4000, 100, [0])])
    trace = build_trace({"source": "mooncake", "path": str(path)}, {"pattern": "replay"}, seed=0,
                        num_requests=3, cache_dir=False)
    assert np.allclose(trace.arrival_s, [0.0, 2.5, 4.0])


def test_the_packaged_trace_loads_with_its_sessions():
    pool = load_pool(WorkloadSpec.from_mapping({"source": "mooncake"}), cache_dir=False)
    t = pool.trace
    assert len(t) == 12031 and pool.meta["sessions"] == pool.n_conversations == 7373
    assert 12000 < float(t.input_len.mean()) < 12100  # "prompts average 12k tokens"
    assert (np.diff(np.sort(t.timestamp_s)) >= 0).all() and float(t.timestamp_s.max()) == pytest.approx(3537.0)
    first_blocks = {int(t.hashes(i)[0]) for i in range(0, len(t), 97)}
    assert len(first_blocks) == 1  # every Kimi request starts with the same system block


def test_packaged_copy_names_its_licence_and_source():
    data = packaged_trace_path().parent
    readme = (data / "README.md").read_text(encoding="utf-8")
    assert "mooncake_conversation_trace.jsonl.gz" in readme and "Apache-2.0" in readme
    assert "kvcache-ai/Mooncake" in readme and "FAST 2025" in readme
    assert "Apache License" in (data / "mooncake_LICENSE-APACHE.txt").read_text(encoding="utf-8")


@pytest.mark.skipif(not SHARED.is_file(), reason="no ../shared/data copy to compare with")
def test_packaged_copy_is_the_shared_trace():
    with gzip.open(packaged_trace_path(), "rb") as fh:
        assert fh.read() == SHARED.read_bytes()
