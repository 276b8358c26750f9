"""Where a trace names the blocks a reply fills: the next turn's chain (``Trace.reply_blocks``)."""
from __future__ import annotations

import numpy as np

from workload.trace import Trace


def trace(rows, chains, bs=4):
    """rows: (conversation, turn, input_len, output_len); chains: one hash list per row."""
    n = len(rows)
    offsets = np.zeros(n + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(c) for c in chains])
    return Trace(
        request_id=np.arange(n, dtype=np.int64),
        conversation_id=np.array([r[0] for r in rows], dtype=object),
        turn=np.array([r[1] for r in rows], dtype=np.int32),
        input_len=np.array([r[2] for r in rows], dtype=np.int32),
        output_len=np.array([r[3] for r in rows], dtype=np.int32),
        arrival_s=np.arange(n, dtype=np.float64),
        timestamp_s=np.full(n, np.nan),
        hash_offsets=offsets,
        block_hashes=np.array([h for c in chains for h in c], dtype=np.uint64),
        block_size=bs,
    )


def test_the_next_turn_names_the_reply_blocks():
    # Block size 4. Conversation a, turn 0: a 6-token prompt (1 full block) and a 9-token
    # reply; it computes 6 + 9 - 1 = 14 tokens, so its reply fills blocks 1 and 2 in the
    # cache. Turn 1 (22 tokens, 5 blocks) starts with turn 0's prompt and reply, so its
    # chain names them: row 1, count 2. Turn 1 computes 22 + 4 - 1 = 25 tokens: 6 full
    # blocks, 5 of them its prompt's, so 1 reply block, named by turn 2's chain (row 0).
    # Turn 2 is the last: none. Hashes in real chains fix every earlier block, so a
    # prompt "starts with" another's chain when their last common block is equal.
    rows = [("a", 2, 30, 3), ("a", 1, 22, 4), ("a", 0, 6, 9), ("b", 0, 10, 5),
            ("c", 0, 8, 20), ("c", 1, 12, 2),  # c's turn 1 is shorter than turn 0 + reply
            ("d", 0, 8, 2), ("d", 1, 16, 2)]  # d's turn 1 does not start with turn 0's chain
    chains = [[11, 12, 13, 14, 15, 16, 17], [11, 12, 13, 14, 15], [11], [21, 22],
              [31, 32], [31, 32, 33], [41, 42], [41, 48, 43, 44]]
    t = trace(rows, chains)
    rows_, counts = t.reply_blocks()
    assert rows_.tolist() == [-1, 0, 1, -1, -1, -1, -1, -1]
    assert counts.tolist() == [0, 1, 2, 0, 0, 0, 0, 0]
    # Turn 0's reply blocks are hashes(row 1)[6 // 4:][:2] = [12, 13].
    i = 2
    lo = t.hash_offsets[rows_[i]] + t.input_len[i] // 4
    assert t.block_hashes[lo:lo + counts[i]].tolist() == [12, 13]


def test_reply_blocks_are_shared_with_the_prompt_that_holds_them():
    rows = [("a", 0, 6, 9), ("a", 1, 22, 4), ("b", 0, 10, 5)]
    chains = [[11], [11, 12, 13, 14, 15], [21, 22]]
    t = trace(rows, chains)
    shared = t.shareable_blocks()
    # Prompts alone: block 11 is in two chains; the rest is unique.
    assert shared.tolist() == [1, 1, 0]
    with_replies = t.shareable_with_replies(shared, t.reply_blocks())
    # Turn 0's chain continues with its reply blocks 12, 13, which turn 1's prompt has.
    assert with_replies.tolist() == [3, 3, 0]
