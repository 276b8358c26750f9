"""``vllm bench serve``'s custom dataset (JSONL: ``prompt``, ``output_tokens``) as a source.

The format is ``CustomDataset``'s in ``vllm/benchmarks/datasets/datasets.py``
(vLLM 0.32): one JSON object per line with a text ``prompt`` and, when
``--custom-output-len -1``, an ``output_tokens`` count; vLLM reads no other key.
This loader also reads the keys ``workload.formats`` writes alongside:
``session_id`` (rows with equal ids are one session, ordered by ``turn`` then
``timestamp``), ``turn``, ``timestamp`` (ms, for ``pattern = "replay"``) and
``delay`` (ms before the turn: its think time). A row without ``session_id`` is
a session of its own. Prompts are tokenized with the workload's tokenizer
without special tokens and hashed per block, so prompts sharing a text prefix
share blocks exactly as far as their tokens agree.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from workload.config import Filters
from workload.formats import optional_number, read_jsonl, session_rows
from workload.hashing import block_hash_chain
from workload.pool import PoolBuilder, RequestPool
from workload.tokenizer import TextTokenizer


def custom_path(path: str) -> Path:
    if not path:
        raise ValueError("[workload].path: source 'vllm_custom' reads a file; give its path "
                         "(JSONL with 'prompt' and 'output_tokens' per line)")
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"[workload].path: vLLM custom dataset {str(p)!r} does not exist")
    return p


def _check(rows: list[dict[str, Any]], path: Path) -> None:
    for rec in rows:
        where = f"{path}:{rec['_line']}"
        if not isinstance(rec.get("prompt"), str):
            raise ValueError(f"{where}: 'prompt' must be a string (vLLM's custom dataset has one per line)")
        out = rec.get("output_tokens")
        if isinstance(out, bool) or not isinstance(out, int) or out < 1:
            raise ValueError(f"{where}: 'output_tokens' must be an integer >= 1 (the reply length; "
                             f"vLLM reads it with --custom-output-len -1); got {out!r}")
        turn = rec.get("turn")
        if turn is not None and (isinstance(turn, bool) or not isinstance(turn, int) or turn < 0):
            raise ValueError(f"{where}: 'turn' must be an integer >= 0; got {turn!r}")


def custom_pool(path: Path, tokenizer: TextTokenizer, block_size: int, filters: Filters,
                meta: dict[str, Any], limit: int | None = None, progress: bool = False) -> RequestPool:
    rows = read_jsonl(path)
    _check(rows, path)
    stamps = [optional_number(r, "timestamp", path) for r in rows]
    delays = [optional_number(r, "delay", path) for r in rows]
    sessions = [None if r.get("session_id") is None else str(r["session_id"]) for r in rows]
    turns = [r.get("turn") for r in rows]
    groups = session_rows(sessions, turns, [s if s == s else 0.0 for s in stamps])
    encoded = tokenizer.encode_batch([r["prompt"] for r in rows])
    builder = PoolBuilder(block_size)
    dropped = kept = 0
    for sid, members in tqdm(groups.items(), desc="hashing custom dataset", unit="session",
                             disable=not progress):
        if limit is not None and kept >= limit:
            break
        reqs, chains = [], []
        for i in members:
            inp, out = len(encoded[i]), int(rows[i]["output_tokens"])
            if not filters.keep_lengths(inp, out) or (filters.max_turns and len(reqs) >= filters.max_turns):
                dropped += 1
                continue
            ts = stamps[i] / 1000.0 if stamps[i] == stamps[i] else math.nan
            think = delays[i] / 1000.0 if delays[i] == delays[i] else math.nan
            turn = turns[i] if turns[i] is not None else len(reqs)
            reqs.append((turn, inp, out, ts, think))
            chains.append(block_hash_chain(np.asarray(encoded[i], dtype=np.int64), block_size))
        if reqs:
            builder.add_requests(sid, reqs, chains)
            kept += 1
    return builder.build({**meta, "rows": len(rows), "rows_filtered": dropped})
