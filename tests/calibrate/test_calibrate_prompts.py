"""Profiling prompts: exact, known prefix sharing."""
import numpy as np
from hypothesis import given, settings, strategies as st

from calibrate.prompts import RESERVED_HIGH, RESERVED_LOW, profiling_trace, hit_tokens, prompt_tokens
from workload.hashing import block_hash_chain

VOCAB = 129280


def test_tokens_are_deterministic_and_in_range():
    a = prompt_tokens(7, 500, vocab_size=VOCAB)
    assert np.array_equal(a, prompt_tokens(7, 500, vocab_size=VOCAB))
    assert a.min() >= RESERVED_LOW and a.max() < VOCAB - RESERVED_HIGH
    assert not np.array_equal(a, prompt_tokens(8, 500, vocab_size=VOCAB))
    assert not np.array_equal(a, prompt_tokens(7, 500, vocab_size=VOCAB, salt=1))


@settings(max_examples=60, deadline=None)
@given(L1=st.integers(1, 400), L2=st.integers(1, 400), shared=st.integers(0, 400), bs=st.sampled_from([16, 32]))
def test_hit_is_the_full_blocks_of_the_common_prefix(L1, L2, shared, bs):
    s1, s2 = min(shared, L1), min(shared, L2)
    a = prompt_tokens(1, L1, prefix_id=3, shared_len=s1, vocab_size=VOCAB)
    b = prompt_tokens(2, L2, prefix_id=3, shared_len=s2, vocab_size=VOCAB)
    common = min(s1, s2)
    assert np.array_equal(a[:common], b[:common])
    seen = set(block_hash_chain(a, bs).tolist())
    hit = hit_tokens(block_hash_chain(b, bs), seen, L2, bs)
    assert hit % bs == 0
    assert hit <= ((L2 - 1) // bs) * bs  # the last token is always recomputed
    # Unique tails differ (with overwhelming probability), so the hit is the common prefix's blocks.
    assert hit == min(common // bs, (L2 - 1) // bs) * bs


def test_build_trace_shares_exactly_the_prefix_blocks():
    t = profiling_trace([0, 1, 2], [300, 300, 100], [5, 5, 5], [0.0, 1.0, 0.5], [9, 9, -1], [200, 200, 0],
                    block_size=32, vocab_size=VOCAB)
    assert list(t.arrival_s) == [0.0, 0.5, 1.0]  # sorted by arrival
    by_id = {int(r): t.hashes(i) for i, r in enumerate(t.request_id)}
    assert np.array_equal(by_id[0][:6], by_id[1][:6])  # 200 // 32 = 6 shared blocks
    assert by_id[0][6] != by_id[1][6]
    assert not set(by_id[2].tolist()) & set(by_id[0].tolist())
    assert list(t.shareable_blocks()[np.argsort(t.request_id)]) == [6, 6, 0]
