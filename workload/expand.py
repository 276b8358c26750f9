"""Multi-turn expansion: one request per user turn, prompting with the conversation so far.

A conversation is laid out once as a token stream in a simple chat template::

    <|user|>\\n {user text} \\n <|assistant|>\\n {reply} \\n <|user|>\\n ...

Turn k's prompt is the stream up to its user message plus the generation prompt
``<|assistant|>\\n``; since the next segment starts with that same header, every
prompt is a prefix of the stream and turn k+1's prompt extends turn k's. The
stream is hashed once, so each prompt's block hash chain is a prefix of the
conversation's chain: exactly the sharing vLLM's prefix cache sees. Each message
is tokenized once (in batches), never the growing conversation.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import numpy as np
from tqdm.auto import tqdm

from workload.config import Filters
from workload.conversation import Conversation
from workload.hashing import block_hash_chain
from workload.pool import PoolBuilder
from workload.tokenizer import TextTokenizer

TEMPLATE_VERSION = 1  # bump when the layout below changes (it is part of cache keys)
HEADERS = {"user": "<|user|>\n", "assistant": "<|assistant|>\n", "system": "<|system|>\n"}
END_OF_MESSAGE = "\n"

BATCH_CONVERSATIONS = 256
BATCH_CHARS = 4_000_000


class ChatTemplate:
    """Token ids of the role headers and the end-of-message marker, encoded once."""

    def __init__(self, tokenizer: TextTokenizer) -> None:
        roles = list(HEADERS)
        encoded = tokenizer.encode_batch([HEADERS[r] for r in roles] + [END_OF_MESSAGE])
        self.header = {r: list(encoded[i]) for i, r in enumerate(roles)}
        self.end = list(encoded[-1])
        self.generation_prompt = self.header["assistant"]


class ExpansionStats:
    """Counts of what the filters removed, for ``trace.meta``."""

    def __init__(self) -> None:
        self.conversations_read = 0
        self.conversations_filtered = 0
        self.turns_empty_reply = 0
        self.turns_filtered_length = 0
        self.turns_beyond_max = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


def keep_conversation(conv: Conversation, filters: Filters) -> bool:
    if filters.languages and (conv.language or "").lower() not in {
        x.lower() for x in filters.languages
    }:
        return False
    if filters.exclude_toxic and conv.toxic:
        return False
    return not (filters.exclude_redacted and conv.redacted)


def think_before(conv: Conversation, m: int) -> float:
    """Seconds from the reply before user message ``m`` to ``m`` (NaN: first turn, no stamps).

    Only per-message timestamps count (WildChat's); a conversation-level timestamp
    says nothing about the gap between two messages.
    """
    stamps = conv.timestamps
    if m < 1 or m >= len(stamps) or conv.roles[m - 1] != "assistant":
        return math.nan
    gap = stamps[m] - stamps[m - 1]
    return gap if math.isfinite(gap) else math.nan


def expand_conversation(
    conv: Conversation,
    token_lists: list[list[int]],
    template: ChatTemplate,
    filters: Filters,
    block_size: int,
    stats: ExpansionStats,
) -> tuple[list[tuple[int, int, int, float, float]], np.ndarray]:
    """Requests (turn, input_len, output_len, timestamp_s, think_s) and the conversation's chain."""
    roles, texts = conv.roles, conv.texts
    requests: list[tuple[int, int, int, float, float]] = []
    stream: list[int] = []
    needed = 0  # tokens of the stream that some kept prompt covers
    user_turn = -1
    for m, role in enumerate(roles):
        if role == "user":
            user_turn += 1
            if filters.max_turns and user_turn >= filters.max_turns:
                stats.turns_beyond_max += sum(1 for r in roles[m:] if r == "user")
                break
        stream += template.header[role]
        stream += token_lists[m]
        stream += template.end
        if role != "user":
            continue
        nxt = m + 1
        if nxt >= len(roles) or roles[nxt] != "assistant" or not texts[nxt].strip():
            stats.turns_empty_reply += 1
            continue
        input_len = len(stream) + len(template.generation_prompt)
        output_len = len(token_lists[nxt])
        if not filters.keep_lengths(input_len, output_len):
            stats.turns_filtered_length += 1
            continue
        requests.append((user_turn, input_len, output_len, conv.message_timestamp(m),
                         think_before(conv, m)))
        needed = input_len
    if not requests:
        return requests, np.zeros(0, dtype=np.uint64)
    # Each kept prompt ends with the header of the reply that follows it in the stream.
    chain = block_hash_chain(np.asarray(stream[:needed], dtype=np.int64), block_size)
    return requests, chain


def _batches(
    conversations: Iterable[Conversation], filters: Filters, stats: ExpansionStats, bar
) -> Iterator[list[Conversation]]:
    batch: list[Conversation] = []
    chars = 0
    for conv in conversations:
        stats.conversations_read += 1
        bar.update(1)
        if not keep_conversation(conv, filters):
            stats.conversations_filtered += 1
            continue
        batch.append(conv)
        chars += sum(len(t) for t in conv.texts)
        if len(batch) >= BATCH_CONVERSATIONS or chars >= BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def expand_conversations(
    conversations: Iterable[Conversation],
    tokenizer: TextTokenizer,
    filters: Filters,
    block_size: int,
    *,
    progress: bool = False,
    total: int | None = None,
    desc: str = "tokenizing",
) -> tuple[PoolBuilder, ExpansionStats]:
    """Tokenize (batched) and expand every kept conversation into a ``PoolBuilder``."""
    template = ChatTemplate(tokenizer)
    builder = PoolBuilder(block_size)
    stats = ExpansionStats()
    with tqdm(total=total, desc=desc, unit="conv", disable=not progress) as bar:
        for batch in _batches(conversations, filters, stats, bar):
            flat = [t for conv in batch for t in conv.texts]
            encoded = tokenizer.encode_batch(flat)
            k = 0
            for conv in batch:
                token_lists = encoded[k : k + len(conv.texts)]
                k += len(conv.texts)
                requests, chain = expand_conversation(
                    conv, token_lists, template, filters, block_size, stats
                )
                builder.add_conversation(conv.conversation_id, requests, chain)
            bar.set_postfix(requests=len(builder), refresh=False)
    return builder, stats
