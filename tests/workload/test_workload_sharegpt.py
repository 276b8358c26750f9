"""ShareGPT: the packaged file (a sample), multi-turn expansion and its prefix structure."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from workload.config import WorkloadSpec
from workload.expand import END_OF_MESSAGE, HEADERS
from workload.hashing import block_hash_chain
from workload.loader import load_pool
from workload.sources.sharegpt import iter_sharegpt, sharegpt_path
from workload_helpers import write_sharegpt

N_SAMPLE = 40


@pytest.fixture(scope="module")
def sample_pool(session_cache):
    spec = WorkloadSpec.from_mapping({"source": "sharegpt", "max_conversations": N_SAMPLE})
    return load_pool(spec, cache_dir=session_cache)


@pytest.fixture(scope="module")
def sample_conversations():
    with sharegpt_path() as p:
        return list(itertools.islice(iter_sharegpt(p), N_SAMPLE))


def _count(tok, text):
    return len(tok.encode_batch([text])[0])


def test_packaged_sample_has_one_request_per_answered_user_turn(sample_pool, sample_conversations):
    expected = 0
    for conv in sample_conversations:
        for m, role in enumerate(conv.roles):
            if role == "user" and m + 1 < len(conv.roles) and conv.roles[m + 1] == "assistant" \
                    and conv.texts[m + 1].strip():
                expected += 1
    assert len(sample_pool) == expected > N_SAMPLE  # multi-turn: more requests than conversations
    assert sample_pool.meta["source"] == "sharegpt" and sample_pool.meta["records_recovered"] == N_SAMPLE


def test_lengths_are_the_tokenizer_counts_of_the_template(sample_pool, sample_conversations, deepseek):
    """Recount a two-turn conversation independently: header + text + end, per message."""
    t = sample_pool.trace
    conv = next(c for c in sample_conversations if c.roles[:4] == ["user", "assistant"] * 2)
    rows = np.flatnonzero(t.conversation_id == conv.conversation_id)
    hdr = {r: _count(deepseek, h) for r, h in HEADERS.items()}
    end = _count(deepseek, END_OF_MESSAGE)
    u0, a0, u1, a1 = (_count(deepseek, x) for x in conv.texts[:4])
    assert t.input_len[rows[0]] == hdr["user"] + u0 + end + hdr["assistant"]
    assert t.output_len[rows[0]] == a0
    assert t.input_len[rows[1]] == t.input_len[rows[0]] + a0 + end + hdr["user"] + u1 + end + hdr["assistant"]
    assert t.output_len[rows[1]] == a1
    assert t.turn[rows[0]] == 0 and t.turn[rows[1]] == 1


def test_later_turns_share_earlier_turns_full_blocks(sample_pool):
    t = sample_pool.trace
    bs = t.block_size
    checked = 0
    for c in range(sample_pool.n_conversations):
        rows = range(sample_pool.conv_starts[c], sample_pool.conv_starts[c + 1])
        for a, b in zip(rows, list(rows)[1:]):
            ha, hb = t.hashes(a), t.hashes(b)
            assert len(ha) == t.input_len[a] // bs and len(hb) == t.input_len[b] // bs
            assert np.array_equal(hb[: len(ha)], ha)
            assert t.input_len[b] > t.input_len[a] + t.output_len[a]
            checked += 1
    assert checked > 20


def test_chains_are_the_hashes_of_the_real_prompt_tokens(tmp_path, deepseek):
    """Rebuild the prompt token ids from the template and hash them with the contract."""
    convs = [[("human", "What is 2+2?"), ("gpt", "It is 4."), ("human", "And 3+3? " * 20), ("gpt", "6.")]]
    path = write_sharegpt(tmp_path / "sg.json", convs)
    pool = load_pool(WorkloadSpec.from_mapping({"source": "sharegpt", "path": str(path), "block_size": 4}),
                     cache_dir=False)

    def enc(text):
        return deepseek.encode_batch([text])[0]

    h, end = {r: enc(x) for r, x in HEADERS.items()}, enc(END_OF_MESSAGE)
    (_, u0), (_, a0), (_, u1), _ = convs[0]
    p0 = h["user"] + enc(u0) + end + h["assistant"]
    p1 = p0 + enc(a0) + end + h["user"] + enc(u1) + end + h["assistant"]
    t = pool.trace
    assert t.input_len.tolist() == [len(p0), len(p1)]
    assert np.array_equal(t.hashes(0), block_hash_chain(p0, 4))
    assert np.array_equal(t.hashes(1), block_hash_chain(p1, 4))


def test_expansion_edge_cases(tmp_path):
    convs = [
        [("system", "You are terse."), ("human", "hi"), ("gpt", "hello")],  # system kept as context
        [("gpt", "Welcome!"), ("human", "thanks"), ("gpt", "")],  # empty reply: no request
        [("human", "a"), ("human", "b"), ("gpt", "c")],  # unanswered user message: context only
        [("human", "x"), ("chatgpt", "y"), ("human", "z"), ("bard", "w")],
    ]
    path = write_sharegpt(tmp_path / "sg.json", convs)
    pool = load_pool(WorkloadSpec.from_mapping({"source": "sharegpt", "path": str(path)}), cache_dir=False)
    t = pool.trace
    assert t.conversation_id.tolist() == ["conv0", "conv2", "conv3", "conv3"]
    assert t.turn.tolist() == [0, 1, 0, 1]
    assert pool.meta["turns_empty_reply"] == 2
    assert not pool.meta["file_truncated"]


def test_duplicate_ids_are_made_unique(tmp_path):
    import json

    recs = [{"id": "same", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}] * 3
    path = tmp_path / "dup.json"
    path.write_text(json.dumps(recs))
    ids = [c.conversation_id for c in iter_sharegpt(path)]
    assert ids == ["same", "same~1", "same~2"]


def test_bad_sharegpt_input_is_named(tmp_path):
    path = write_sharegpt(tmp_path / "bad.json", [[("narrator", "once upon a time")]])
    with pytest.raises(ValueError, match=r"record 0: unknown speaker 'narrator'; known speakers: .*human"):
        load_pool(WorkloadSpec.from_mapping({"source": "sharegpt", "path": str(path)}), cache_dir=False)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_pool(WorkloadSpec.from_mapping({"source": "sharegpt", "path": str(tmp_path / "nope.json")}))
    with pytest.raises(ValueError, match=r"workload.languages: \['English'\] needs a source with language labels"):
        load_pool(WorkloadSpec.from_mapping({"source": "sharegpt", "languages": ["English"]}))
