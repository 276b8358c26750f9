"""build_trace: sizes, ordering, cycling, replay, determinism and errors."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workload import build_trace
from workload.config import WorkloadSpec
from workload.loader import load_pool
from workload_helpers import AZURE_CSV, WILDCHAT_PARQUET

SHAREGPT = {"source": "sharegpt", "max_conversations": 40}
#: Open sessions: every turn at its own arrival time (these tests check that order).
OPEN = {"sessions": "open"}
AZURE = {"source": "azure", "path": str(AZURE_CSV)}
COLUMNS = ("request_id", "conversation_id", "turn", "input_len", "output_len", "arrival_s",
           "timestamp_s", "hash_offsets", "block_hashes")


@pytest.fixture(scope="module")
def cache(session_cache):
    return session_cache


@pytest.fixture(scope="module")
def pool(cache):
    return load_pool(WorkloadSpec.from_mapping(SHAREGPT), cache_dir=cache)


def _same(a, b):
    return all(np.array_equal(getattr(a, c), getattr(b, c), equal_nan=c.endswith("_s")) for c in COLUMNS)


def test_same_seed_same_trace_other_seed_other_trace(cache):
    args = (SHAREGPT, {"pattern": "gamma", "rate": 5.0, "burstiness": 0.5})
    a = build_trace(*args, seed=11, num_requests=300, cache_dir=cache)
    b = build_trace(*args, seed=11, num_requests=300, cache_dir=cache)
    c = build_trace(*args, seed=12, num_requests=300, cache_dir=cache)
    assert _same(a, b)
    assert not np.array_equal(a.arrival_s, c.arrival_s)
    assert not np.array_equal(a.conversation_id, c.conversation_id)


def test_shape_of_a_trace(pool, cache):
    n = len(pool) - 1
    t = build_trace(SHAREGPT, {"pattern": "poisson", "rate": 2.0}, seed=0, num_requests=n, cache_dir=cache)
    assert len(t) == n and t.request_id.tolist() == list(range(n))
    assert np.all(np.diff(t.arrival_s) >= 0) and t.arrival_s[0] > 0
    assert np.array_equal(np.diff(t.hash_offsets), t.input_len // t.block_size)
    for key in ("source", "tokenizer", "block_size", "filters", "pool_size", "arrivals", "seed"):
        assert key in t.meta, key
    assert t.meta["tokenizer"] == "deepseek" and t.meta["passes"] == 1 and "cycled" not in t.meta
    assert t.meta["pool_size"] == len(pool) and t.meta["pool_conversations"] == pool.n_conversations


def _check_turn_order(t):
    last = {}
    for c, k in zip(t.conversation_id, t.turn):
        assert k > last.get(c, -1), f"turn {k} of {c} after turn {last.get(c)}"
        last[c] = k


def test_interleave_keeps_turn_order_and_bounds_open_sessions(pool, cache):
    n = len(pool)
    t = build_trace({**SHAREGPT, "active_sessions": 5}, {"rate": 1.0, **OPEN}, seed=3, num_requests=n, cache_dir=cache)
    _check_turn_order(t)
    assert sorted(zip(t.conversation_id, t.turn)) == sorted(zip(pool.trace.conversation_id, pool.trace.turn))
    first = {c: i for i, c in reversed(list(enumerate(t.conversation_id)))}
    last = {c: i for i, c in enumerate(t.conversation_id)}
    open_at = [sum(1 for c in first if first[c] <= i <= last[c]) for i in range(0, n, 7)]
    assert max(open_at) <= 5
    # turns of multi-turn conversations are spread out, not back to back
    gaps = [i - j for c in first if last[c] > first[c] for i, j in [(last[c], first[c])]]
    assert np.mean(gaps) > 2


def test_shuffle_keeps_conversations_together(pool, cache):
    t = build_trace({**SHAREGPT, "order": "shuffle"}, OPEN, seed=4, num_requests=len(pool), cache_dir=cache)
    _check_turn_order(t)
    runs = [c for i, c in enumerate(t.conversation_id) if i == 0 or c != t.conversation_id[i - 1]]
    assert len(runs) == len(set(runs)) == pool.n_conversations
    assert runs != list(dict.fromkeys(pool.trace.conversation_id))  # not the dataset order


def test_sequential_is_dataset_order(pool, cache):
    t = build_trace({**SHAREGPT, "order": "sequential"}, OPEN, seed=4, num_requests=len(pool), cache_dir=cache)
    assert np.array_equal(t.conversation_id, pool.trace.conversation_id)
    assert np.array_equal(t.block_hashes, pool.trace.block_hashes)


def test_cycling_when_the_pool_is_too_small(pool, cache):
    n = 2 * len(pool) + 10
    t = build_trace(SHAREGPT, {"pattern": "constant", "rate": 10.0}, seed=1, num_requests=n, cache_dir=cache)
    assert len(t) == n and t.meta["passes"] == 3 and "cycled" in t.meta
    pass0 = np.array(["#" not in c for c in t.conversation_id])
    assert pass0.sum() == len(pool)
    assert {c.split("#")[1] for c in t.conversation_id[~pass0]} == {"1", "2"}
    hashes0 = set(np.concatenate([t.hashes(i) for i in np.flatnonzero(pass0)]).tolist())
    hashes1 = set(np.concatenate([t.hashes(i) for i in np.flatnonzero(~pass0)]).tolist())
    assert not hashes0 & hashes1  # repeats do not reuse the first pass's cache entries
    _check_turn_order(t)


def test_duration_mode(cache):
    t = build_trace(SHAREGPT, {"pattern": "poisson", "rate": 4.0, **OPEN}, seed=2, duration_s=30.0,
                    cache_dir=cache)
    assert 0 < len(t) and t.arrival_s[-1] <= 30.0
    assert abs(len(t) - 120) < 5 * np.sqrt(120)
    both = build_trace(SHAREGPT, {"rate": 4.0}, seed=2, num_requests=7, duration_s=30.0, cache_dir=cache)
    assert len(both) == 7  # num_requests wins


def test_replay_of_the_azure_trace(cache):
    pool = load_pool(WorkloadSpec.from_mapping(AZURE), cache_dir=cache)
    ts = pool.trace.timestamp_s
    t = build_trace(AZURE, {"pattern": "replay", "time_scale": 10.0}, seed=0, duration_s=60.0, cache_dir=cache)
    expected = np.count_nonzero((ts - ts[0]) / 10.0 <= 60.0)
    assert len(t) == expected
    assert np.allclose(t.arrival_s, (t.timestamp_s - ts[0]) / 10.0)
    assert t.meta["order"] == "timestamp"
    rated = build_trace(AZURE, {"pattern": "replay", "target_rate": 2.0}, seed=0, num_requests=500, cache_dir=cache)
    assert np.allclose(rated.timestamp_s, ts[:500])  # in trace order
    assert rated.meta["replay_mean_rate"] == pytest.approx(2.0)
    more = build_trace(AZURE, {"pattern": "replay"}, seed=0, num_requests=len(pool) + 5, cache_dir=cache)
    assert more.meta["passes"] == 2 and np.all(np.diff(more.arrival_s) >= 0)


def test_seeded_replay_windows_differ_by_seed_and_keep_the_traces_gaps(cache):
    pool = load_pool(WorkloadSpec.from_mapping(AZURE), cache_dir=cache)
    ts = np.sort(pool.trace.timestamp_s)
    arr = {"pattern": "replay", "replay_window": "seeded", **OPEN}
    n = 200
    starts = []
    for seed in range(4):
        t = build_trace(AZURE, arr, seed=seed, num_requests=n, cache_dir=cache)
        first = t.meta["replay_first_request"]
        assert 0 <= first <= len(ts) - n and t.meta["passes"] == 1
        # n consecutive requests of the trace from the drawn one, the first at 0 s
        assert np.allclose(t.timestamp_s, ts[first:first + n])
        assert np.allclose(t.arrival_s, ts[first:first + n] - ts[first])
        assert t.meta["replay_offset_s"] == pytest.approx(ts[first] - ts[0])
        assert _same(t, build_trace(AZURE, arr, seed=seed, num_requests=n, cache_dir=cache))
        starts.append(first)
    assert len(set(starts)) == 4
    # by duration: the window is the run's length of trace time, wherever it starts
    t = build_trace(AZURE, arr, seed=5, duration_s=30.0, cache_dir=cache)
    first = t.meta["replay_first_request"]
    assert len(t) == np.count_nonzero((ts[first:] - ts[first]) <= 30.0)
    start = build_trace(AZURE, {"pattern": "replay", **OPEN}, seed=5, num_requests=n, cache_dir=cache)
    assert np.allclose(start.timestamp_s, ts[:n]) and "replay_first_request" not in start.meta


def test_a_seeded_replay_window_longer_than_the_trace_is_refused(cache):
    pool = load_pool(WorkloadSpec.from_mapping(AZURE), cache_dir=cache)
    arr = {"pattern": "replay", "replay_window": "seeded"}
    with pytest.raises(ValueError, match="needs a trace longer than the run.*requests asked"):
        build_trace(AZURE, arr, seed=0, num_requests=len(pool) + 1, cache_dir=cache)
    with pytest.raises(ValueError, match="needs a trace longer than the run.*duration_s"):
        build_trace(AZURE, arr, seed=0, duration_s=1e9, cache_dir=cache)
    with pytest.raises(ValueError, match="replay_window"):
        build_trace(AZURE, {"pattern": "replay", "replay_window": "random"}, seed=0,
                    num_requests=5, cache_dir=cache)


def test_replay_of_wildchat_sorts_by_timestamp(cache):
    t = build_trace({"source": "wildchat", "path": str(WILDCHAT_PARQUET)},
                    {"pattern": "replay", **OPEN}, seed=0, num_requests=10, cache_dir=cache)
    assert np.all(np.diff(t.timestamp_s) >= 0) and t.arrival_s[0] == 0.0
    assert np.allclose(t.arrival_s, t.timestamp_s - t.timestamp_s[0])


def test_errors_are_clear(cache):
    with pytest.raises(ValueError, match="needs num_requests or duration_s"):
        build_trace(SHAREGPT, {}, seed=0, cache_dir=cache)
    with pytest.raises(ValueError, match=r"arrivals\.ratee: unknown key; did you mean 'rate'"):
        build_trace(SHAREGPT, {"ratee": 3}, seed=0, num_requests=5, cache_dir=cache)
    with pytest.raises(ValueError, match="replay' replays the dataset's own timestamps, but workload.source = 'sharegpt' has none"):
        build_trace(SHAREGPT, {"pattern": "replay"}, seed=0, num_requests=5, cache_dir=cache)
    with pytest.raises(ValueError, match="no request is left .* after the filters"):
        build_trace({**SHAREGPT, "min_input_len": 10**9}, {}, seed=0, num_requests=5, cache_dir=cache)
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        build_trace(SHAREGPT, {}, seed=-1, num_requests=5, cache_dir=cache)
    with pytest.raises(ValueError, match="num_requests must be an integer >= 1"):
        build_trace(SHAREGPT, {}, seed=0, num_requests=0, cache_dir=cache)
    with pytest.raises(ValueError, match="no request arrives within duration_s"):
        build_trace(SHAREGPT, {"rate": 0.001, **OPEN}, seed=0, duration_s=1.0, cache_dir=cache)


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 400),
    order=st.sampled_from(["interleave", "shuffle", "sequential"]),
    sessions=st.integers(1, 50),
    pattern=st.sampled_from(["poisson", "gamma", "constant", "burst"]),
)
def test_trace_invariants(pool, cache, seed, n, order, sessions, pattern):
    wl = {**SHAREGPT, "order": order, "active_sessions": sessions}
    t = build_trace(wl, {"pattern": pattern, "rate": 3.0}, seed=seed, num_requests=n, cache_dir=cache)
    assert len(t) == n and np.all(np.diff(t.arrival_s) >= 0)
    assert t.request_id.tolist() == list(range(n))
    _check_turn_order(t)
    assert _same(t, build_trace(wl, {"pattern": pattern, "rate": 3.0}, seed=seed, num_requests=n, cache_dir=cache))


def test_replay_of_simultaneous_timestamps(tmp_path):
    csv = tmp_path / "same.csv"
    csv.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "2023-11-16 18:15:46.0,40,5\n" * 3)
    wl = {"source": "azure", "path": str(csv)}
    t = build_trace(wl, {"pattern": "replay"}, seed=0, num_requests=7, cache_dir=False)
    assert len(t) == 7 and (t.arrival_s == 0).all() and t.meta["passes"] == 3
    with pytest.raises(ValueError, match="timestamps that are not all equal"):
        build_trace(wl, {"pattern": "replay"}, seed=0, duration_s=5.0, cache_dir=False)


def test_take_and_resalting_do_not_depend_on_the_chunk_size(pool, cache, monkeypatch):
    """Gathers and re-salts run a bounded number of rows at a time; the result must not show it."""
    import workload.ordering as ordering
    import workload.trace as trace_mod

    n = 2 * len(pool) + 10
    args = (SHAREGPT, {"pattern": "constant", "rate": 10.0})
    whole = build_trace(*args, seed=1, num_requests=n, cache_dir=cache)
    monkeypatch.setattr(trace_mod, "TAKE_CHUNK_ROWS", 7)
    monkeypatch.setattr(ordering, "SALT_CHUNK_ROWS", 5)
    chunked = build_trace(*args, seed=1, num_requests=n, cache_dir=cache)
    assert _same(whole, chunked) and list(whole.conversation_id) == list(chunked.conversation_id)
    rows = np.random.default_rng(0).integers(0, len(pool), 50)
    taken = pool.trace.take(rows)
    for k, i in enumerate(rows):
        assert np.array_equal(taken.hashes(k), pool.trace.hashes(i))
