"""What a router can know: RequestInfo, BackendSnapshot, ScrapedMetrics, Outcome."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from routing import BackendSnapshot, Outcome, RequestInfo, ScrapedMetrics


def test_request_info_never_carries_the_output_length():
    names = {f.name for f in dataclasses.fields(RequestInfo)}
    assert {"request_id", "input_len", "arrival_s", "block_hashes", "session_id", "turn"} <= names
    assert not any("output" in n for n in names)


def test_request_info_is_immutable_with_empty_hashes_by_default():
    r = RequestInfo(request_id=1, input_len=10, arrival_s=0.5)
    assert len(r.block_hashes) == 0 and r.session_id == "" and r.turn == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.input_len = 11  # type: ignore[misc]


def test_snapshot_is_unscraped_until_a_scrape_arrives():
    s = BackendSnapshot(index=3, name="h100-3", group="h100")
    assert s.inflight_requests == 0 and s.inflight_tokens == 0 and s.healthy
    assert all(math.isnan(getattr(s, k)) for k in ("running", "waiting", "kv_usage", "prefix_queries", "prefix_hits"))
    assert s.scrape_age_s == math.inf
    s.apply_scrape(ScrapedMetrics(running=4, waiting=2, kv_usage=0.25, prefix_queries=100, prefix_hits=40))
    assert (s.running, s.waiting, s.kv_usage, s.prefix_queries, s.prefix_hits) == (4, 2, 0.25, 100, 40)
    assert s.inflight_requests == 0  # the router's own counts are not scraped


def test_outcome_tpot_matches_vllm_bench():
    o = Outcome(request_id=1, backend_index=0, ok=True, input_len=10, output_len=11, ttft_s=0.5, e2el_s=1.5)
    assert o.tpot_s == pytest.approx((1.5 - 0.5) / 10)
    assert math.isnan(dataclasses.replace(o, output_len=1).tpot_s)
    assert math.isnan(dataclasses.replace(o, ok=False).tpot_s)


def test_block_hashes_accept_arrays_and_lists():
    a = RequestInfo(1, 32, 0.0, np.array([5, 6], dtype=np.uint64))
    b = RequestInfo(1, 32, 0.0, [5, 6])
    assert list(a.block_hashes) == list(b.block_hashes) == [5, 6]


def test_request_info_compares_and_hashes_despite_array_hashes():
    h = np.array([1, 2, 3], dtype=np.uint64)
    a = RequestInfo(1, 48, 0.0, h)
    b = RequestInfo(1, 48, 0.0, h.copy())
    assert a == b and hash(a) == hash(b)
    assert a != RequestInfo(2, 48, 0.0, h)
    assert len({a, b}) == 1
