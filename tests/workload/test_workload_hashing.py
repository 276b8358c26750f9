"""Block hash chains (the shared contract), continuing a chain, and the keyed streams."""
from __future__ import annotations

import hashlib

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from workload.hashing import ROOT_HASH, block_hash_chain, continue_chain, extend_chain, keyed_stream, mix64


def reference_chain(tokens, block_size, parent=ROOT_HASH):
    """The contract written out plainly: blake2b-64 over (parent LE u64 || tokens LE i64)."""
    out, h = [], parent
    for i in range(len(tokens) // block_size):
        block = np.asarray(tokens[i * block_size : (i + 1) * block_size], dtype="<i8").tobytes()
        digest = hashlib.blake2b(h.to_bytes(8, "little") + block, digest_size=8).digest()
        h = int.from_bytes(digest, "little")
        out.append(h)
    return out


@settings(max_examples=60, deadline=None)
@given(
    tokens=st.lists(st.integers(0, 2**40), max_size=200),
    block_size=st.integers(1, 32),
)
def test_block_hash_chain_matches_the_contract(tokens, block_size):
    chain = block_hash_chain(tokens, block_size)
    assert chain.dtype == np.uint64
    assert [int(h) for h in chain] == reference_chain(tokens, block_size)


@settings(max_examples=60, deadline=None)
@given(
    tokens=st.lists(st.integers(0, 50_000), max_size=300),
    cut=st.integers(0, 300),
    block_size=st.sampled_from([1, 4, 16]),
)
def test_continue_chain_equals_hashing_everything(tokens, cut, block_size):
    cut = min(cut, len(tokens))
    prefix_chain = block_hash_chain(tokens[:cut], block_size)
    full = continue_chain(prefix_chain, tokens, block_size)
    assert np.array_equal(full, block_hash_chain(tokens, block_size))
    assert np.array_equal(full[: len(prefix_chain)], prefix_chain)


def test_continue_chain_agrees_with_extend_chain_at_block_boundaries():
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 1000, 64), rng.integers(0, 1000, 40)
    chain_a = block_hash_chain(a, 16)
    assert np.array_equal(
        continue_chain(chain_a, np.concatenate([a, b]), 16), extend_chain(chain_a, b, 16)
    )


def test_continue_chain_rejects_a_chain_longer_than_the_tokens():
    import pytest

    with pytest.raises(ValueError, match="chain has 3 blocks"):
        continue_chain(block_hash_chain(np.arange(48), 16), np.arange(20), 16)


def test_mix64_is_injective_on_a_sample_and_salt_changes_it():
    x = np.arange(200_000, dtype=np.uint64)
    assert len(np.unique(mix64(x))) == len(x)
    assert not np.any(mix64(x, salt=1) == mix64(x, salt=2))


def test_keyed_stream_is_a_pure_function_of_key_and_salt():
    assert np.array_equal(keyed_stream(7, 50, salt=3), keyed_stream(7, 50, salt=3))
    assert np.array_equal(keyed_stream(7, 50, salt=3)[:20], keyed_stream(7, 20, salt=3))
    assert not np.array_equal(keyed_stream(7, 50, salt=3), keyed_stream(8, 50, salt=3))
    assert not np.array_equal(keyed_stream(7, 50, salt=3), keyed_stream(7, 50, salt=4))
    assert len(keyed_stream(-1, 5)) == 5  # any Python int is a valid key
