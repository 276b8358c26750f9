"""WildChat through HF datasets: the fixture as Parquet and JSONL, filters, and a fast clear
failure when the Hub is not usable."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from workload.config import WorkloadSpec
from workload.loader import load_pool
from workload.sources.wildchat import DatasetUnavailable, local_files, open_records
from workload_helpers import REPO, WILDCHAT_DIR, WILDCHAT_JSONL, WILDCHAT_PARQUET


def _raw():
    return pq.read_table(WILDCHAT_PARQUET).to_pylist()


def _pool(**kw):
    return load_pool(WorkloadSpec.from_mapping({"source": "wildchat", **kw}), cache_dir=False)


@pytest.fixture(scope="module")
def parquet_pool():
    return _pool(path=str(WILDCHAT_PARQUET))


def test_fixture_has_wildchat_1m_top_level_schema():
    cols = pq.read_schema(WILDCHAT_PARQUET).names
    assert cols == [
        "conversation_hash", "model", "timestamp", "conversation", "turn", "language",
        "openai_moderation", "detoxify_moderation", "toxic", "redacted", "state", "country",
        "hashed_ip", "header",
    ]
    with open(WILDCHAT_JSONL, encoding="utf-8") as fh:
        assert list(json.loads(fh.readline())) == cols


def test_parquet_default_filters(parquet_pool):
    raw = _raw()
    expected = []
    for rec in raw:
        if rec["toxic"]:
            continue  # exclude_toxic defaults to true
        conv = rec["conversation"]
        for k in range(0, len(conv), 2):
            if conv[k + 1]["content"].strip():
                expected.append((rec["conversation_hash"], k // 2))
    t = parquet_pool.trace
    assert list(zip(t.conversation_id.tolist(), t.turn.tolist())) == expected
    assert parquet_pool.meta["conversations_filtered"] == 1
    assert parquet_pool.meta["turns_empty_reply"] == 1


def test_timestamps_are_the_user_messages(parquet_pool):
    raw = {r["conversation_hash"]: r for r in _raw()}
    t = parquet_pool.trace
    for i in range(len(t)):
        msg = raw[t.conversation_id[i]]["conversation"][2 * t.turn[i]]
        assert msg["role"] == "user"
        assert t.timestamp_s[i] == msg["timestamp"].timestamp()


def test_jsonl_gives_the_same_pool_as_parquet(parquet_pool):
    j = _pool(path=str(WILDCHAT_JSONL)).trace
    p = parquet_pool.trace
    for col in ("conversation_id", "turn", "input_len", "output_len", "timestamp_s", "hash_offsets", "block_hashes"):
        assert np.array_equal(getattr(j, col), getattr(p, col)), col


def test_a_folder_prefers_parquet(tmp_path):
    assert local_files(str(WILDCHAT_DIR)) == ("parquet", [WILDCHAT_PARQUET])
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "part.jsonl").write_text(WILDCHAT_JSONL.read_text(encoding="utf-8"), encoding="utf-8")
    assert local_files(str(tmp_path))[0] == "json"
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no WildChat files"):
        local_files(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        local_files(str(tmp_path / "missing"))


def test_filters(parquet_pool):
    raw = _raw()
    by_lang = _pool(path=str(WILDCHAT_PARQUET), languages=["Chinese", "french"]).trace
    assert set(by_lang.conversation_id) == {
        r["conversation_hash"] for r in raw if r["language"] in ("Chinese", "French")
    }
    with_toxic = _pool(path=str(WILDCHAT_PARQUET), exclude_toxic=False).trace
    toxic = {r["conversation_hash"] for r in raw if r["toxic"]}
    assert toxic <= set(with_toxic.conversation_id) and not toxic & set(parquet_pool.trace.conversation_id)
    no_redacted = _pool(path=str(WILDCHAT_PARQUET), exclude_redacted=True).trace
    redacted = {r["conversation_hash"] for r in raw if r["redacted"]}
    assert redacted and not redacted & set(no_redacted.conversation_id)
    assert redacted <= set(parquet_pool.trace.conversation_id)
    first_two = _pool(path=str(WILDCHAT_PARQUET), max_turns=2).trace
    assert first_two.turn.max() == 1 and (parquet_pool.trace.turn >= 2).any()
    short = _pool(path=str(WILDCHAT_PARQUET), max_input_len=200, min_output_len=20).trace
    assert short.input_len.max() <= 200 and short.output_len.min() >= 20 and 0 < len(short) < len(parquet_pool)
    read_three = _pool(path=str(WILDCHAT_PARQUET), max_conversations=3)
    assert read_three.meta["conversations_read"] == 3


def test_missing_fields_are_named(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"conversation_hash": "x", "timestamp": None}) + "\n")
    with pytest.raises(ValueError, match="missing field 'conversation'"):
        _pool(path=str(bad))
    with pytest.raises(ValueError, match="neither Parquet nor JSON Lines"):
        _pool(path=str(WILDCHAT_DIR / "make_fixture.py"))


def test_unreachable_hub_fails_fast_with_advice(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    start = time.monotonic()
    with pytest.raises(DatasetUnavailable) as err:
        open_records("", "allenai/WildChat-1M", "train")
    assert time.monotonic() - start < 10
    msg = str(err.value)
    assert "cannot connect to 127.0.0.1:9" in msg
    assert "path =" in msg and "HF_HUB_OFFLINE=1" in msg and "huggingface-cli download" in msg


def test_offline_mode_without_a_cached_copy_fails_fast_with_advice(tmp_path):
    """A fresh process (the HF libraries read offline flags at import) with an empty HF cache."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    code = (
        "from workload import build_trace\n"
        "build_trace({'source': 'wildchat'}, {}, seed=0, num_requests=10, cache_dir=False)\n"
    )
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert "DatasetUnavailable" in proc.stderr and "offline mode is on (HF_HUB_OFFLINE=1)" in proc.stderr
    assert "set [workload] path" in proc.stderr
    assert elapsed < 60  # no minute-long retry loop (imports alone take a few seconds)


def test_a_pool_built_from_the_hub_is_reused_offline(tmp_path, monkeypatch):
    """The cache key of a Hub dataset holds no revision, so an online build serves offline runs."""
    from workload.sources import wildchat

    records = _raw()
    monkeypatch.setattr(wildchat, "open_records", lambda path, dataset, split: iter(records))
    spec = WorkloadSpec.from_mapping({"source": "wildchat"})
    online = load_pool(spec, cache_dir=tmp_path)
    assert online.meta["cache"] == "miss" and online.meta["dataset"] == "allenai/WildChat-1M"

    def offline(path, dataset, split):
        raise DatasetUnavailable("offline")

    monkeypatch.setattr(wildchat, "open_records", offline)
    again = load_pool(spec, cache_dir=tmp_path)
    assert again.meta["cache"] == "hit" and np.array_equal(again.trace.block_hashes, online.trace.block_hashes)
    with pytest.raises(DatasetUnavailable):
        load_pool(WorkloadSpec.from_mapping({"source": "wildchat", "split": "test"}), cache_dir=tmp_path)


def test_timestamp_forms():
    from datetime import datetime, timezone

    from workload.conversation import to_epoch_seconds

    aware = datetime(2023, 4, 9, 0, 2, 53, tzinfo=timezone.utc)
    assert to_epoch_seconds(aware) == aware.timestamp() == 1680998573.0
    assert to_epoch_seconds(datetime(2023, 4, 9, 0, 2, 53)) == 1680998573.0  # naive = UTC
    assert to_epoch_seconds("2023-04-09T00:02:53Z") == 1680998573.0
    assert to_epoch_seconds("2023-04-09T02:02:53+02:00") == 1680998573.0
    assert to_epoch_seconds(1680998573000) == 1680998573.0  # milliseconds
    assert to_epoch_seconds(1680998573.5) == 1680998573.5
    assert np.isnan(to_epoch_seconds(None)) and np.isnan(to_epoch_seconds(""))
    with pytest.raises(ValueError, match="not an ISO-8601 timestamp: 'yesterday'"):
        to_epoch_seconds("yesterday")
