"""Traces other tools read and write: Mooncake JSONL and ``vllm bench serve``'s custom dataset.

**Mooncake JSONL** (one JSON object per line): ``timestamp`` (ms from the start),
``input_length``, ``output_length`` and ``hash_ids``, one id per
``hash_block_size`` tokens of the prompt (the last block partial), equal ids
meaning equal prefixes (Qin et al., FAST 2025; ``kvcache-ai/Mooncake``
``FAST25-release/traces``). Read as is by ``vllm bench serve --dataset-name
timed_trace`` (``TimedTrace`` in ``vllm/benchmarks/datasets/datasets.py``, vLLM
0.32: ``--timed-trace-chunk-hash-size`` tokens per id, ``--timed-trace-sec-multiplier
0.001`` for milliseconds) and by AIPerf's ``mooncake_trace`` dataset type, whose
``MooncakeTrace`` model (``aiperf`` ``dataset/loader/models.py``) adds the optional
``session_id`` and ``delay`` (ms to wait before sending the turn) that this export
writes too, with ``turn``. The lab's trace hashes every ``block_size`` tokens, so
the export uses ``hash_block_size = block_size`` by default (the exact sharing
structure; ``vllm bench serve`` needs ``--timed-trace-chunk-hash-size`` set to it);
a multiple of it (512, as Mooncake's own traces) names each coarse block by its
last engine block, which keeps sharing exact up to the coarse blocks. Ids are
renumbered densely in order of first appearance, as Mooncake's are.

**vLLM custom dataset** (``CustomDataset`` in the same vLLM file): JSONL with a
text ``prompt`` and ``output_tokens`` (used with ``--custom-output-len -1``); other
keys are ignored by vLLM, so ``session_id``, ``turn``, ``timestamp`` and ``delay``
ride along for the import. The trace has no text, so each token becomes one
word of a tokenizer-specific word list: words that the tokenizer encodes as a
single token after a space (``" lantern"``), so the prompt re-tokenizes to
exactly ``input_len`` tokens and shared blocks to equal words. The server adds
its BOS token, so vLLM counts ``input_len + 1``. Replay it with ``vllm bench serve
--dataset-name custom --dataset-path FILE --custom-output-len -1
--skip-chat-template --disable-shuffle`` (vLLM shuffles otherwise).

Both import back (``[workload] source = "mooncake"`` with ``hash_block_size``,
``source = "vllm_custom"``): sessions from ``session_id``, think times from
``delay``, arrival times from ``timestamp``.
"""
from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from workload.hashing import keyed_stream
from workload.trace import Trace

_WORD_SALT = 0x30D5
_TAIL_SALT = 0x7A11
#: A word of the export's vocabulary: a space, then 2 to 12 lowercase ASCII letters.
_WORD = re.compile(r"^ [a-z]{2,12}$")


# --- hash ids ------------------------------------------------------------------------------
def hash_ids(trace: Trace, hash_block_size: int | None = None) -> list[list[int]]:
    """Each request's Mooncake ``hash_ids``: dense ids of its ``hash_block_size``-token blocks.

    Full blocks are named by the trace's block hash chain (coarse blocks by their
    last engine block); a partial last block gets an id of its own (the trace
    does not know the tokens past its last full block).
    """
    bs = trace.block_size
    hb = hash_block_size or bs
    if hb % bs:
        raise ValueError(f"hash_block_size = {hb} must be a multiple of the trace's block_size {bs}")
    per = hb // bs
    ids: dict[int, int] = {}
    out = []
    for i in range(len(trace)):
        chain = trace.hashes(i)
        n = int(trace.input_len[i])
        row = []
        for k in range(n // hb):
            key = int(chain[(k + 1) * per - 1])
            if key not in ids:
                ids[key] = len(ids)
            row.append(ids[key])
        if n % hb:  # a partial last block: an id of its own, never shared
            ids[~len(ids)] = len(ids)  # a key no hash (>= 0) can take
            row.append(len(ids) - 1)
        out.append(row)
    return out


# --- export ----------------------------------------------------------------------------------
def mooncake_records(trace: Trace, hash_block_size: int | None = None) -> Iterable[dict[str, Any]]:
    """The trace as Mooncake records, in row order (the planned send order)."""
    ids = hash_ids(trace, hash_block_size)
    for i in range(len(trace)):
        rec = {
            "timestamp": _ms(trace.arrival_s[i]),
            "input_length": int(trace.input_len[i]),
            "output_length": int(trace.output_len[i]),
            "hash_ids": ids[i],
            "session_id": str(trace.conversation_id[i]),
            "turn": int(trace.turn[i]),
        }
        think = float(trace.think_s[i])
        if math.isfinite(think):
            rec["delay"] = _ms(think)
        yield rec


def _ms(seconds: float) -> float:
    return round(float(seconds) * 1000.0, 3)


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> int:
    """Write records as JSON lines (atomically); returns how many."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, separators=(",", ":")) + "\n")
            n += 1
    tmp.replace(path)
    return n


def export_mooncake(trace: Trace, path: str | Path, hash_block_size: int | None = None) -> int:
    return write_jsonl(path, mooncake_records(trace, hash_block_size))


@functools.lru_cache(maxsize=4)
def word_list(tokenizer_name: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Words the tokenizer encodes as exactly one token each, after a space; and their ids."""
    from workload.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_name)
    backend = tok._backend
    vocab = backend.get_vocab() if hasattr(backend, "get_vocab") else {}
    candidates = []
    for _, tid in sorted(vocab.items(), key=lambda kv: kv[1]):
        text = backend.decode([tid]) if hasattr(backend, "decode") else ""
        if _WORD.match(text):
            candidates.append((text, tid))
    if not candidates:
        raise ValueError(f"tokenizer {tokenizer_name!r}: no single-token words to write prompts with")
    encoded = tok.encode_batch([w for w, _ in candidates])
    words = [(w, t) for (w, t), ids in zip(candidates, encoded) if ids == [t]]
    if len(words) < 256:
        raise ValueError(f"tokenizer {tokenizer_name!r}: only {len(words)} single-token words")
    return tuple(w for w, _ in words), tuple(t for _, t in words)


def prompt_words(trace: Trace, i: int, words: tuple[str, ...]) -> list[str]:
    """``input_len`` words: each full block's words a pure function of its hash (as
    ``workload.tokens`` does for token ids), the partial tail of the request id."""
    bs = trace.block_size
    n = len(words)
    parts = [keyed_stream(int(h), bs, _WORD_SALT) % np.uint64(n) for h in trace.hashes(i)]
    tail = int(trace.input_len[i]) - len(trace.hashes(i)) * bs
    if tail:
        parts.append(keyed_stream(int(trace.request_id[i]), tail, _TAIL_SALT) % np.uint64(n))
    idx = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
    return [words[k] for k in idx]


def vllm_custom_records(trace: Trace, tokenizer: str = "deepseek") -> Iterable[dict[str, Any]]:
    words, _ = word_list(tokenizer)
    for i in range(len(trace)):
        rec = {
            "prompt": "".join(prompt_words(trace, i, words)),
            "output_tokens": int(trace.output_len[i]),
            "session_id": str(trace.conversation_id[i]),
            "turn": int(trace.turn[i]),
            "timestamp": _ms(trace.arrival_s[i]),
        }
        think = float(trace.think_s[i])
        if math.isfinite(think):
            rec["delay"] = _ms(think)
        yield rec


def export_vllm_custom(trace: Trace, path: str | Path, tokenizer: str = "deepseek") -> int:
    return write_jsonl(path, vllm_custom_records(trace, tokenizer))


FORMATS = {"mooncake": ".mooncake.jsonl", "vllm_custom": ".vllm-custom.jsonl"}


# --- import helpers shared by the sources --------------------------------------------------
def session_rows(sessions: list[str | None], turns: list[int | None], order: list[float]) -> dict[str, list[int]]:
    """Rows per session id, in (turn, timestamp, file order) order; None: a session per row."""
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(sessions):
        groups.setdefault(s if s is not None else f"row-{i}", []).append(i)
    for rows in groups.values():
        rows.sort(key=lambda i: (turns[i] if turns[i] is not None else -1, order[i], i))
    return groups


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """JSON objects, one per line (gzip when the name ends in .gz); errors name the line."""
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not a JSON object ({exc.msg})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object")
            rec["_line"] = n
            rows.append(rec)
    if not rows:
        raise ValueError(f"{path}: no records")
    return rows


def optional_number(rec: dict[str, Any], name: str, path: Path) -> float:
    """``rec[name]`` as a number >= 0, NaN when absent."""
    if name not in rec or rec[name] is None:
        return math.nan
    v = rec[name]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
        raise ValueError(f"{path}:{rec.get('_line', '?')}: {name} must be a number >= 0; got {v!r}")
    return float(v)
