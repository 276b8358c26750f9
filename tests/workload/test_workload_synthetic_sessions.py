"""Synthetic multi-turn sessions on shared system prompts (few agents, many users)."""
from __future__ import annotations

import numpy as np
import pytest

from workload.config import SchemaError, WorkloadSpec
from workload.loader import load_pool


def sessions_pool(seed=0, **syn):
    base = {"prefix_groups": 3, "prefix_len": 256, "num_requests": 200,
            "turns": {"dist": "uniform", "min": 1, "max": 6},
            "input": {"dist": "uniform", "min": 20, "max": 80},
            "output": {"dist": "uniform", "min": 10, "max": 60}}
    base.update(syn)
    return load_pool(WorkloadSpec.from_mapping({"source": "synthetic", "synthetic": base}), seed=seed)


def shared_blocks(a: np.ndarray, b: np.ndarray) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_each_turn_resends_the_conversation_so_far():
    t = sessions_pool().trace
    assert len(t) == 200
    by_conv: dict[str, list[int]] = {}
    for i in range(len(t)):
        by_conv.setdefault(t.conversation_id[i], []).append(i)
    assert any(len(rows) > 1 for rows in by_conv.values())
    for rows in by_conv.values():
        assert [int(t.turn[i]) for i in rows] == list(range(len(rows)))
        for prev, cur in zip(rows, rows[1:]):
            # this turn's prompt = previous prompt + its reply + a new message of 20..80 tokens
            grown = int(t.input_len[cur]) - int(t.input_len[prev]) - int(t.output_len[prev])
            assert 20 <= grown <= 80
            a, b = t.hashes(prev), t.hashes(cur)
            assert np.array_equal(b[: len(a)], a)  # the previous prompt's blocks, all of them


def test_sessions_share_exactly_their_system_prompt():
    t = sessions_pool().trace
    first = {}
    for i in range(len(t)):
        if t.turn[i] == 0:
            first[t.conversation_id[i]] = t.hashes(i)
    chains = list(first.values())
    prefix_blocks = 256 // 16
    shares = {shared_blocks(a, b) for k, a in enumerate(chains) for b in chains[k + 1:]}
    assert shares <= {0, prefix_blocks}  # the same system prompt, or nothing
    heads = {tuple(c[:prefix_blocks].tolist()) for c in chains}
    assert len(heads) == 3  # three system prompts, each shared by many sessions


def test_one_turn_per_session_is_the_old_generator():
    a = load_pool(WorkloadSpec.from_mapping({"source": "synthetic", "synthetic": {
        "num_requests": 40, "prefix_groups": 2, "prefix_len": 64}}), seed=4).trace
    b = load_pool(WorkloadSpec.from_mapping({"source": "synthetic", "synthetic": {
        "num_requests": 40, "prefix_groups": 2, "prefix_len": 64, "turns": {"dist": "fixed", "value": 1}}}),
        seed=4).trace
    assert np.array_equal(a.block_hashes, b.block_hashes) and len(set(a.conversation_id)) == 40


def test_sessions_are_a_function_of_the_seed_and_stop_at_the_length_filter():
    a, b, c = sessions_pool(5).trace, sessions_pool(5).trace, sessions_pool(6).trace
    assert np.array_equal(a.block_hashes, b.block_hashes) and not np.array_equal(a.block_hashes, c.block_hashes)
    capped = load_pool(WorkloadSpec.from_mapping({
        "source": "synthetic", "max_input_len": 500,
        "synthetic": {"prefix_groups": 1, "prefix_len": 256, "num_requests": 100,
                      "turns": {"dist": "fixed", "value": 10},
                      "input": {"dist": "fixed", "value": 50}, "output": {"dist": "fixed", "value": 50}}}),
        seed=0).trace
    # 306, 406, 506 > 500: every session stops after two turns
    assert set(capped.turn.tolist()) == {0, 1} and capped.input_len.max() == 406


def test_a_bad_turns_table_is_named():
    with pytest.raises(SchemaError, match="workload.synthetic.turns"):
        WorkloadSpec.from_mapping({"source": "synthetic", "synthetic": {"turns": {"dist": "fixed", "value": 0}}})


def test_filters_that_keep_nothing_are_an_error_not_a_hang():
    with pytest.raises(ValueError, match="no turn within the length filters"):
        load_pool(WorkloadSpec.from_mapping({
            "source": "synthetic", "max_input_len": 100,
            "synthetic": {"prefix_groups": 1, "prefix_len": 256, "num_requests": 10,
                          "turns": {"dist": "fixed", "value": 3}}}), seed=0)
