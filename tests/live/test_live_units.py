"""Small pure pieces of live mode: fleet bookkeeping, fault draws, prompt parsing."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import routing
from live.transport.http import HttpError
from live.emulator.faults import CRASH, ERROR, HANG, OK, Faults
from live.router import LiveRouter
from live.gateway.cli import parse_param
from live.request_tokens import request_token_ids, render_chat
from routing import NoHealthyBackend, Outcome, RequestInfo


def make_fleet(n=3, strategy="round_robin", **kw):
    return LiveRouter([f"http://127.0.0.1:{9000 + i}" for i in range(n)], routing.build(strategy), **kw)


@settings(max_examples=80, deadline=None)
@given(st.integers(2, 5), st.lists(st.tuples(st.sets(st.integers(0, 4)), st.booleans()),
                                   max_size=30))
def test_dispatch_with_exclusions_never_changes_health_and_never_picks_excluded(n, steps):
    fleet = make_fleet(n, "random")
    down = set()
    for rid, (exclude, flip) in enumerate(steps):
        exclude = {i for i in exclude if i < n}
        if flip:  # eject or restore a backend now and then
            b = rid % n
            fleet.router.set_healthy(b, b in down)
            down.symmetric_difference_update({b})
        before = [s.healthy for s in fleet.router.snapshots]
        try:
            d = fleet.dispatch(RequestInfo(rid, 10, 0.0), sorted(exclude))
        except NoHealthyBackend:
            assert all(not h or i in exclude for i, h in enumerate(before))
        else:
            assert d.backend not in exclude and before[d.backend]
            fleet.finish(Outcome(rid, d.backend, True, 10, 1, 0.1, 0.2))
        assert [s.healthy for s in fleet.router.snapshots] == before
    assert fleet.router.inflight == 0


def test_ejection_after_consecutive_failures_only():
    changes = []
    fleet = make_fleet(2, eject_after=3, on_health_change=lambda i, h: changes.append((i, h)))
    for ok in (False, False, True, False, False):
        fleet.report(0, ok)
    assert fleet.healthy(0)  # a success in between resets the count
    fleet.report(0, False)
    assert not fleet.healthy(0) and fleet.ejections == [1, 0] and changes == [(0, False)]
    fleet.report(0, False)
    assert fleet.ejections == [1, 0]  # counted once per ejection


def test_fleet_rejects_bad_settings():
    with pytest.raises(ValueError, match="at least one"):
        LiveRouter([], routing.build("random"))
    with pytest.raises(ValueError, match="eject_after"):
        make_fleet(eject_after=0)
    with pytest.raises(ValueError, match="scrape_interval"):
        make_fleet(scrape_interval_s=0)


def test_fault_draws_are_seeded_and_thresholds_apply():
    f1, f2 = Faults(error_rate=0.3, hang_rate=0.2, seed=7), Faults(error_rate=0.3, hang_rate=0.2, seed=7)
    seq1 = [f1.decide(k) for k in range(1, 200)]
    assert seq1 == [f2.decide(k) for k in range(1, 200)]  # same seed, same fates
    f3 = Faults(error_rate=0.3, hang_rate=0.2, seed=8)
    assert seq1 != [f3.decide(k) for k in range(1, 200)]
    counts = {x: seq1.count(x) for x in (OK, ERROR, HANG)}
    assert 30 <= counts[ERROR] <= 90 and 10 <= counts[HANG] <= 60
    g = Faults(crash_after=3, hang_after=1)
    assert [g.decide(k) for k in (1, 2, 3, 4)] == [OK, HANG, HANG, CRASH]


@pytest.mark.parametrize("changes, needle", [
    ({"error_rate": 2}, "error_rate"), ({"nope": 1}, "nope"), ({"slowdown": 0}, "slowdown"),
    ({"error_status": 42}, "HTTP status"), ({"hang_after": -1}, "hang_after"),
    ({"error_rate": "high"}, "number"),
])
def test_fault_updates_are_validated_as_a_whole(changes, needle):
    f = Faults(error_rate=0.1)
    with pytest.raises(ValueError, match=needle):
        f.update({"hang_rate": 0.5, **changes})
    assert f.hang_rate == 0.0 and f.error_rate == 0.1  # nothing changed


def test_prompt_forms():
    assert request_token_ids({"prompt": [5, 6]}, chat=False) == [5, 6]
    assert request_token_ids({"prompt": [[5, 6]]}, chat=False) == [5, 6]
    assert len(request_token_ids({"prompt": ["hello world"]}, chat=False)) >= 2
    for doc, needle in (({}, "missing"), ({"prompt": []}, "empty"), ({"prompt": ""}, "empty"),
                        ({"prompt": [1, -2]}, "token ids"), ({"prompt": [True]}, "token ids"),
                        ({"prompt": 3}, "string or a list"), ({"prompt": ["a", "b"]}, "token ids")):
        with pytest.raises(HttpError) as exc:
            request_token_ids(doc, chat=False)
        assert exc.value.status == 400 and needle in exc.value.message


_msg = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]),
                              "content": st.text(max_size=20)})


@settings(max_examples=50, deadline=None)
@given(st.lists(_msg, min_size=2, max_size=6), st.integers(1, 5))
def test_chat_rendering_keeps_conversation_prefixes(messages, k):
    k = min(k, len(messages) - 1)
    head = render_chat(messages[:k]).removesuffix("<|assistant|>\n")
    assert render_chat(messages).startswith(head)


def test_chat_rejects_malformed_messages():
    for messages in ("hi", [], [{"content": "x"}], [{"role": "user", "content": 3}],
                     [{"role": "user", "content": [{"type": "image_url"}]}]):
        with pytest.raises(HttpError):
            render_chat(messages)
    assert render_chat([{"role": "user", "content": [{"type": "text", "text": "a"},
                                                     {"type": "text", "text": "b"}]}]) == \
        "<|user|>\nab\n<|assistant|>\n"


def test_gateway_param_values_are_json_or_strings():
    assert parse_param("objective=\"ttft\"") == ("objective", "ttft")
    assert parse_param("slo_ms=250") == ("slo_ms", 250)
    assert parse_param("model=models/a.json") == ("model", "models/a.json")
    assert parse_param("explore=0.1") == ("explore", 0.1)
    with pytest.raises(Exception, match="key=value"):
        parse_param("novalue")


def test_block_hashes_of_token_prompts_match_the_trace_builder():
    from workload.hashing import block_hash_chain

    ids = list(range(100, 150))
    assert np.array_equal(block_hash_chain(request_token_ids({"prompt": ids}, chat=False), 16),
                          block_hash_chain(ids, 16))


def test_stop_awaits_every_background_task_and_logs_one_that_failed(caplog):
    import asyncio
    import logging

    fleet = LiveRouter(["http://127.0.0.1:1"], routing.build("round_robin"))

    async def broken():
        raise ValueError("scrape parser blew up")

    async def forever():
        await asyncio.sleep(3600)

    async def scenario():
        crashed = asyncio.create_task(broken(), name="broken-scrape")
        waiting = asyncio.create_task(forever(), name="health")
        fleet._tasks += [crashed, waiting]
        await asyncio.sleep(0)  # let the broken task die first
        await fleet.stop()  # must not raise the task's error
        return waiting

    with caplog.at_level(logging.WARNING):
        waiting = asyncio.run(scenario())
    assert waiting.cancelled() and fleet._tasks == []
    assert "background_task_failed" in caplog.text and "broken-scrape" in caplog.text
