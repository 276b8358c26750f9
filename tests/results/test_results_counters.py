"""The engines' counters over a unit: differences of two scrapes, and their place in the record file."""
from __future__ import annotations

import math

import pyarrow.parquet as pq
import pytest

from results.counters import COUNTERS_KEY, BackendCounters, UnitCounters, difference, read_counters
from results.records import RecordWriter, RequestRecord, read_records, write_records

NAN = math.nan


def record(rid: int, backend: int = 0) -> RequestRecord:
    return RequestRecord(
        experiment_id="e", point_id="p", strategy="s", seed=0, request_id=rid, conversation_id="c",
        turn=0, backend=backend, arrival_s=0.0, dispatch_s=0.0, first_token_s=0.1, last_token_s=0.2,
        finish_s=0.2, input_len=10, cached_tokens=0, output_len=2, requested_output_len=2,
        num_preemptions=0, status="ok")


def test_difference_of_two_scrapes():
    before = [{"prefix_queries": 100.0, "prefix_hits": 40.0, "preemptions": 1.0},
              {"prefix_queries": 0.0, "prefix_hits": 0.0}]
    after = [{"prefix_queries": 350.0, "prefix_hits": 140.0, "preemptions": 1.0},
             {"prefix_queries": 80.0, "prefix_hits": 20.0}]
    c = difference(before, after, "two scrapes")
    assert c.backends[0] == BackendCounters(250.0, 100.0, 0.0)
    assert c.backends[0].hit_rate == pytest.approx(0.4)
    # a counter the backend does not export stays unknown
    assert c.backends[1].prefix_queries == 80 and math.isnan(c.backends[1].preemptions)
    assert c.fleet_hit_rate == pytest.approx(120 / 330)


def test_a_counter_that_went_down_was_reset_and_is_unknown():
    c = difference([{"prefix_queries": 500.0, "prefix_hits": 300.0}],
                   [{"prefix_queries": 20.0, "prefix_hits": 5.0}], "restarted")
    assert math.isnan(c.backends[0].prefix_queries) and math.isnan(c.backends[0].hit_rate)
    assert math.isnan(c.fleet_hit_rate)


def test_scrape_lists_must_match():
    with pytest.raises(ValueError, match="2 scrapes before the unit but 1 after"):
        difference([{}, {}], [{}], "x")


def test_fleet_rate_leaves_out_backends_without_counters():
    c = UnitCounters((BackendCounters(100.0, 25.0), BackendCounters(NAN, NAN)), "partial")
    assert c.fleet_hit_rate == pytest.approx(0.25)
    assert math.isnan(UnitCounters((), "").fleet_hit_rate)
    assert math.isnan(BackendCounters(0.0, 0.0).hit_rate)


def test_json_round_trip_keeps_nan_as_null():
    c = UnitCounters((BackendCounters(10.0, 5.0, NAN),), "sim", {"note": "x"})
    text = c.to_bytes()
    assert b"null" in text and b"NaN" not in text
    back = UnitCounters.from_bytes(text)
    assert back.backends[0].prefix_hits == 5.0 and math.isnan(back.backends[0].preemptions)
    assert back.source == "sim" and back.extra == {"note": "x"}
    with pytest.raises(ValueError, match="'backends' list"):
        UnitCounters.from_bytes(b'{"backends": 3}')


@pytest.mark.parametrize("how", ["writer", "write_records"])
def test_counters_travel_in_the_record_file(tmp_path, how):
    c = UnitCounters((BackendCounters(30.0, 10.0, 0.0), BackendCounters(60.0, 0.0, 2.0)), "by hand")
    path = tmp_path / "seed=0.parquet"
    if how == "writer":
        with RecordWriter(path, batch_rows=1) as w:
            for i in range(3):
                w.write(record(i, i % 2))
            w.counters = c
    else:
        write_records(path, [record(i, i % 2) for i in range(3)], c)
    back = read_counters(path)
    assert back is not None and back.backends == c.backends and back.source == "by hand"
    assert read_records(path).num_rows == 3  # the records read as before


def test_a_file_without_counters_reads_as_none_and_bad_ones_are_named(tmp_path):
    plain = write_records(tmp_path / "plain.parquet", [record(0)])
    assert read_counters(plain) is None
    table = pq.read_table(plain)
    meta = {**table.schema.metadata, COUNTERS_KEY: b"not json"}
    pq.write_table(table.replace_schema_metadata(meta), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="bad.parquet: unreadable backend counters"):
        read_counters(tmp_path / "bad.parquet")
