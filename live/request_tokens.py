"""Prompts as token ids: text through a tokenizer, chat messages through a template.

The emulator needs a prompt's token ids to size its prefill and key its prefix
cache; the gateway needs them to hash the prompt's blocks for cache-aware
routing. Both call this module so that the same text gives the same ids (and the
same block hashes) on both sides. Token-id prompts are used as given.

Chat messages are rendered with one fixed, documented template (``<|role|>\\n
content\\n`` per message, then ``<|assistant|>\\n``) rather than a model's own
Jinja chat template: it keeps the prefix structure of a conversation (each turn
extends the previous prompt), which is what prefix caching and routing care
about, without loading model files.

Long prompts cost time and memory, and the servers that call this run one event
loop each, so ``PromptWorker`` does the work in one worker thread (the Rust
tokenizer releases the GIL) and never on the loop:

- text is tokenized in pieces of ``CHUNK_CHARS`` cut before a space that starts a
  word (where the tokenizer's pre-tokenizer cuts anyway), and the count is checked
  after each piece: a prompt longer than ``limit`` tokens is refused after at most
  ``limit`` tokens' worth of work, however long it is, and memory stays at one
  piece's encoding;
- after a large prompt the C allocator is asked to hand freed memory back to the
  system (``malloc_trim``): the tokenizer's buffers live in per-thread malloc
  arenas that glibc otherwise keeps, which left a gateway at 1 GB after one 15 MB
  prompt.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import ctypes.util
import functools
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from live.transport.http import HttpError
from workload.hashing import block_hash_chain
from workload.tokenizer import OFFLINE_DEFAULT, TextTokenizer, load_tokenizer

#: Characters per tokenizer call (about 16k tokens of English).
CHUNK_CHARS = 65536
#: Token ids are signed 64-bit integers in the block hashes (a vocabulary is far smaller).
MAX_TOKEN_ID = 2**63 - 1
#: Token-id prompts longer than this are checked and hashed on the worker thread.
INLINE_IDS = 8192
#: After a job over this many characters (or ids), freed memory is handed back.
TRIM_AFTER = 1 << 20


class PromptTooLong(HttpError):
    """A prompt over the token limit (a 400, as vLLM answers a prompt over its context)."""

    def __init__(self, tokens: int, limit: int, exact: bool) -> None:
        count = f"{tokens}" if exact else f"at least {tokens}"
        super().__init__(400, (
            f"This model's maximum context length is {limit} tokens. However, your prompt has "
            f"{count} tokens. Please reduce the length of the prompt."), "prompt")
        self.tokens = tokens
        self.limit = limit


@functools.lru_cache(maxsize=4)
def text_tokenizer(name: str = OFFLINE_DEFAULT) -> TextTokenizer:
    """The tokenizer for text prompts (default: the workload package's offline default)."""
    return load_tokenizer(name)


async def ensure_tokenizer(name: str = OFFLINE_DEFAULT) -> None:
    """Load the tokenizer in a worker thread (about a second) so the loop never blocks on it."""
    if name not in _loaded:
        await asyncio.to_thread(text_tokenizer, name)
        _loaded.add(name)


def needs_tokenizer(doc: dict[str, Any], chat: bool) -> bool:
    """True when the request's prompt is text (chat messages, or a string prompt)."""
    if chat:
        return True
    prompt = doc.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    return isinstance(prompt, str)


_loaded: set[str] = set()


def encode_text(text: str, tokenizer: str = OFFLINE_DEFAULT, limit: int | None = None) -> np.ndarray:
    """``text``'s token ids (int64), tokenized a piece at a time (``split_points``).

    With ``limit``, stops with ``PromptTooLong`` as soon as more than ``limit`` tokens
    are counted, so refusing a huge prompt costs about ``limit`` tokens of work.
    """
    tok = text_tokenizer(tokenizer)
    parts: list[np.ndarray] = []
    count = 0
    bounds = split_points(text)
    for a, b in zip(bounds, bounds[1:]):
        ids = np.asarray(tok.encode_batch([text[a:b]])[0], dtype=np.int64)
        count += len(ids)
        if limit is not None and count > limit:
            raise PromptTooLong(count, limit, exact=b == len(text))
        parts.append(ids)
    return parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.zeros(0, np.int64)


def split_points(text: str, size: int = CHUNK_CHARS) -> list[int]:
    """Offsets that cut ``text`` into pieces of at most ``size`` characters, each cut
    just before a single space followed by a non-space (byte-level BPE pre-tokenizers
    start a word's token there), else at ``size`` when a piece has no such space."""
    points = [0]
    n = len(text)
    while n - points[-1] > size:
        start = points[-1]
        cut = start + size
        at = text.rfind(" ", start + size // 2, cut)
        while at > start and not (text[at - 1] != " " and not text[at - 1].isspace()
                                  and at + 1 < n and not text[at + 1].isspace()):
            at = text.rfind(" ", start + size // 2, at)
        points.append(at if at > start else cut)
    points.append(n)
    return points


def release_memory() -> None:
    """Ask the C allocator to return freed memory to the system (glibc; elsewhere a no-op)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # pragma: no cover - musl has no malloc_trim
        return None


def render_chat(messages: Any) -> str:
    """The fixed chat template; ``HttpError(400)`` for malformed messages."""
    if not isinstance(messages, list) or not messages:
        raise HttpError(400, "'messages' must be a non-empty list of {role, content} objects",
                        "messages")
    parts: list[str] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise HttpError(400, f"messages[{i}] must be an object with a string 'role'",
                            "messages")
        parts.append(f"<|{m['role']}|>\n{_content_text(m.get('content'), i)}\n")
    parts.append("<|assistant|>\n")
    return "".join(parts)


def _content_text(content: Any, i: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        texts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                raise HttpError(400, f"messages[{i}].content: only text parts are supported",
                                "messages")
        return "".join(texts)
    raise HttpError(400, f"messages[{i}].content must be a string or a list of text parts",
                    "messages")


def prompt_source(doc: dict[str, Any], chat: bool) -> str | list:
    """The prompt as given: text (chat rendered) or a list of token ids; 400 otherwise.

    ``prompt`` may be a string, a list of token ids, or a one-element list of
    either (the OpenAI API's batch form with one prompt).
    """
    if chat:
        return render_chat(doc.get("messages"))
    if "prompt" not in doc:
        raise HttpError(400, "missing required field 'prompt'", "prompt")
    prompt = doc["prompt"]
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise HttpError(400, "'prompt' is empty", "prompt")
        return prompt
    if isinstance(prompt, list):
        if not prompt:
            raise HttpError(400, "'prompt' is an empty list of token ids", "prompt")
        return prompt
    raise HttpError(400, "'prompt' must be a string or a list of token ids (one prompt per "
                         "request)", "prompt")


def source_ids(source: str | list, tokenizer: str = OFFLINE_DEFAULT,
               limit: int | None = None) -> np.ndarray:
    """Token ids (int64) of a ``prompt_source`` result; ``PromptTooLong`` over ``limit``."""
    if isinstance(source, str):
        return encode_text(source, tokenizer, limit)
    if limit is not None and len(source) > limit:
        raise PromptTooLong(len(source), limit, exact=True)
    return _token_ids(source)


def request_token_ids(doc: dict[str, Any], chat: bool, tokenizer: str = OFFLINE_DEFAULT,
                     limit: int | None = None) -> list[int]:
    """The prompt of a completions (``prompt``) or chat (``messages``) request as ids."""
    return source_ids(prompt_source(doc, chat), tokenizer, limit).tolist()


def _token_ids(ids: Sequence[Any]) -> np.ndarray:
    for t in ids:
        if type(t) is float and t.is_integer() and t > MAX_TOKEN_ID:
            # JSON parsers read integers beyond 64 bits as floats
            raise HttpError(400, f"'prompt' token id {t:.0f} is out of range: token ids must be "
                                 f"below 2^63 (a model's vocabulary is far smaller)", "prompt")
        if type(t) is not int or t < 0:
            raise HttpError(400, f"'prompt' token ids must be integers >= 0, got {t!r}", "prompt")
        if t > MAX_TOKEN_ID:
            raise HttpError(400, f"'prompt' token id {t} is out of range: token ids must be below "
                                 f"2^63 (a model's vocabulary is far smaller)", "prompt")
    return np.asarray(ids, dtype=np.int64)


@dataclass(frozen=True, slots=True)
class Prompt:
    """A prompt ready to route or serve: its ids and, when asked for, its block hashes."""

    ids: np.ndarray  # int64
    hashes: np.ndarray | None

    def __len__(self) -> int:
        return len(self.ids)


class PromptWorker:
    """Tokenizing and hashing prompts off the event loop, one prompt at a time.

    One thread: a burst of huge prompts queues instead of multiplying the memory
    they need. Small token-id prompts (the load generator's) are handled inline:
    a thread hop would cost more than the work.
    """

    def __init__(self, tokenizer: str = OFFLINE_DEFAULT) -> None:
        self.tokenizer = tokenizer
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="prompts")

    def _work(self, source: str | list, limit: int | None, block_size: int | None) -> Prompt:
        try:
            ids = source_ids(source, self.tokenizer, limit)
            hashes = block_hash_chain(ids, block_size) if block_size else None
            return Prompt(ids, hashes)
        finally:
            if len(source) > TRIM_AFTER:
                release_memory()

    def try_inline(self, source: str | list, limit: int | None = None,
                   block_size: int | None = None) -> Prompt | None:
        """The prompt now when that is cheap (a short token-id list), else None: ``run`` it.

        A token-id list over ``limit`` is refused here whatever its length (no work).
        """
        if isinstance(source, list):
            if limit is not None and len(source) > limit:
                raise PromptTooLong(len(source), limit, exact=True)
            if len(source) <= INLINE_IDS:
                return self._work(source, limit, block_size)
        return None

    async def run(self, source: str | list, limit: int | None = None,
                  block_size: int | None = None) -> Prompt:
        """The prompt, prepared on the worker thread (``HttpError(400)`` when bad or too long)."""
        if isinstance(source, str):
            await ensure_tokenizer(self.tokenizer)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._work, source, limit, block_size)

    async def prepare(self, doc: dict[str, Any], chat: bool, *, limit: int | None = None,
                      block_size: int | None = None) -> Prompt:
        """A request's prompt as a ``Prompt``: inline when cheap, else on the worker."""
        source = prompt_source(doc, chat)
        prompt = self.try_inline(source, limit, block_size)
        return prompt if prompt is not None else await self.run(source, limit, block_size)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
