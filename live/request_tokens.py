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
"""
from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from typing import Any

from live.transport.http import HttpError
from workload.tokenizer import OFFLINE_DEFAULT, TextTokenizer, load_tokenizer


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


def encode_text(text: str, tokenizer: str = OFFLINE_DEFAULT) -> list[int]:
    return text_tokenizer(tokenizer).encode_batch([text])[0]


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


def request_token_ids(doc: dict[str, Any], chat: bool, tokenizer: str = OFFLINE_DEFAULT) -> list[int]:
    """The prompt of a completions (``prompt``) or chat (``messages``) request as ids.

    ``prompt`` may be a string, a list of token ids, or a one-element list of
    either (the OpenAI API's batch form with one prompt). Anything else is a 400.
    """
    if chat:
        return encode_text(render_chat(doc.get("messages")), tokenizer)
    if "prompt" not in doc:
        raise HttpError(400, "missing required field 'prompt'", "prompt")
    prompt = doc["prompt"]
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise HttpError(400, "'prompt' is empty", "prompt")
        return encode_text(prompt, tokenizer)
    if isinstance(prompt, list):
        return _token_ids(prompt)
    raise HttpError(400, "'prompt' must be a string or a list of token ids (one prompt per "
                         "request)", "prompt")


def _token_ids(ids: Sequence[Any]) -> list[int]:
    if not ids:
        raise HttpError(400, "'prompt' is an empty list of token ids", "prompt")
    for t in ids:
        if type(t) is not int or t < 0:
            raise HttpError(400, f"'prompt' token ids must be integers >= 0, got {t!r}", "prompt")
    return list(ids)
