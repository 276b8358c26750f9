"""The Mooncake trace (``timestamp``, ``input_length``, ``output_length``, ``hash_ids``).

Moonshot AI's Kimi traces, released with "Mooncake" (Qin et al., FAST 2025;
Apache-2.0): one JSON object per line, ``timestamp`` in milliseconds from the
start, lengths in tokens, and ``hash_ids``: one id per 512-token block of the
prompt (the last one partial), remapped so that equal ids mean the same prefix.
The conversation trace (one hour, 12,031 requests, prompts averaging 12k tokens)
ships gzipped in ``workload/data``; the loader takes any file in this format.

**Blocks.** The engine caches blocks of ``block_size`` tokens, so each 512-token
id is split into ``512 / block_size`` engine blocks whose hashes are a pure
function of the id and the position inside it. Ids are prefix hashes (every id
has one predecessor and one position in the whole trace; the loader checks it),
so two requests share engine blocks exactly when they share ids, and a shared
partial block matches only the engine blocks both prompts fill.

**Other block sizes and sessions given.** ``hash_block_size`` (``[workload]``,
default 512) is how many tokens one id covers, for traces written with another
block size (``workload.formats`` exports the lab's own 16-token blocks, vLLM's
``timed_trace`` reads any). Lines may carry AIPerf's optional ``session_id`` and
``delay`` (ms before the turn, its think time) and a ``turn``: with ``session_id``
on every line the sessions are taken as given instead of rebuilt; on some lines
only, the file is refused (``check_session_ids``).

**Sessions.** The trace has no conversation ids. A request continues the session
of the earlier request it shares the longest run of ids with, when that run goes
past the first id (every Kimi request starts with the same system block, id 0 in
the conversation trace); otherwise it starts a new session. That recovers the
multi-turn structure (a turn re-sends the previous turns) for session-keyed
routing; ``turn`` counts requests within a session.
"""
from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from workload.config import Filters
from workload.formats import read_jsonl
from workload.hashing import mix64
from workload.pool import PoolBuilder, RequestPool

PACKAGED_FILE = "mooncake_conversation_trace.jsonl.gz"
MOONCAKE_BLOCK = 512
FIELDS = ("timestamp", "input_length", "output_length", "hash_ids")
_SALT = 0x3C0C
#: A shared run of at least this many ids makes two requests one session.
SESSION_MIN_SHARED = 2


def packaged_trace_path() -> Path:
    return Path(str(resources.files("workload").joinpath("data", PACKAGED_FILE)))


def mooncake_path(path: str) -> Path:
    p = Path(path).expanduser() if path else packaged_trace_path()
    if not p.is_file():
        raise FileNotFoundError(f"[workload].path: Mooncake trace {str(p)!r} does not exist")
    return p


def read_trace(path: Path, hash_block: int = MOONCAKE_BLOCK) -> list[dict[str, Any]]:
    """The trace's records, checked (``ValueError`` names the line and the field)."""
    rows = read_jsonl(path)
    for rec in rows:
        n = rec["_line"]
        missing = [f for f in FIELDS if f not in rec]
        if missing:
            raise ValueError(f"{path}:{n}: missing field(s) {', '.join(missing)}; a Mooncake "
                             f"trace line has {', '.join(FIELDS)}")
        for f in ("timestamp", "input_length", "output_length"):
            v = rec[f]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"{path}:{n}: {f} must be a number >= 0; got {v!r}")
        ids = rec["hash_ids"]
        if not isinstance(ids, list) or not all(isinstance(h, int) and h >= 0 for h in ids):
            raise ValueError(f"{path}:{n}: hash_ids must be a list of ids >= 0")
        need = math.ceil(rec["input_length"] / hash_block)
        if len(ids) < need:
            raise ValueError(f"{path}:{n}: {len(ids)} hash_ids cover {len(ids) * hash_block} "
                             f"tokens, fewer than input_length {rec['input_length']} (ids of "
                             f"{hash_block} tokens; set [workload] hash_block_size if the "
                             "trace's blocks are another size)")
        for f in ("delay",):
            v = rec.get(f)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
                raise ValueError(f"{path}:{n}: {f} must be a number >= 0 (ms); got {v!r}")
        t = rec.get("turn")
        if t is not None and (isinstance(t, bool) or not isinstance(t, int) or t < 0):
            raise ValueError(f"{path}:{n}: turn must be an integer >= 0; got {t!r}")
    return rows


def check_prefix_ids(rows: list[dict[str, Any]], path: Path) -> None:
    """Every id must have one predecessor: ids must name prefixes, not block contents."""
    parent: dict[int, int] = {}
    for rec in rows:
        prev = -1
        for h in rec["hash_ids"]:
            p = parent.setdefault(h, prev)
            if p != prev:
                raise ValueError(
                    f"{path}:{rec.get('_line', '?')}: hash id {h} follows id {prev} here and id {p} elsewhere; "
                    f"the loader needs prefix hashes (equal ids = equal prefixes), as Mooncake's "
                    f"released traces have")
            prev = h


def sessions(rows: list[dict[str, Any]]) -> list[int]:
    """Each record's session: that of the earlier record sharing its longest run of ids.

    Ids are prefix hashes (``check_prefix_ids``), so the id at position ``k``
    names the whole run ``ids[:k + 1]``: one dictionary of ids is enough.
    """
    owner: dict[int, int] = {}
    out = []
    first = SESSION_MIN_SHARED - 1  # the position whose id makes a run of that length
    for i, rec in enumerate(rows):
        ids = rec["hash_ids"]
        s = i
        for k in range(len(ids) - 1, first - 1, -1):
            found = owner.get(ids[k])
            if found is not None:
                s = found
                break
        out.append(s)
        for k in range(first, len(ids)):
            owner.setdefault(ids[k], s)
    return out


def check_session_ids(rows: list[dict[str, Any]], path: Path) -> None:
    """Refuse ``session_id`` on some lines but not all: rebuilding the sessions would
    ignore the ids that are given, and keeping them would leave the rest unassigned."""
    missing = [r for r in rows if r.get("session_id") is None]
    if missing and len(missing) < len(rows):
        have = next(r for r in rows if r.get("session_id") is not None)
        raise ValueError(
            f"{path}:{missing[0]['_line']}: no session_id, while line {have['_line']} has one "
            f"({have['session_id']!r}); give session_id on every line or on none "
            f"(none: sessions are rebuilt from shared hash_ids)")


def engine_chain(hash_ids: list[int], input_len: int, block_size: int,
                 hash_block: int = MOONCAKE_BLOCK) -> np.ndarray:
    """Hashes of the prompt's full ``block_size``-token blocks, from its ``hash_block``-token ids."""
    per = hash_block // block_size
    nb = input_len // block_size
    k = np.arange(nb, dtype=np.uint64)
    ids = np.asarray(hash_ids, dtype=np.uint64)[(k // np.uint64(per)).astype(np.int64)]
    with np.errstate(over="ignore"):
        return mix64(ids * np.uint64(per) + k % np.uint64(per), _SALT)


def mooncake_pool(path: Path, block_size: int, filters: Filters, meta: dict[str, Any],
                  limit: int | None = None, progress: bool = False,
                  hash_block: int = MOONCAKE_BLOCK) -> RequestPool:
    if block_size < 1 or hash_block % block_size:
        raise ValueError(
            f"[workload].block_size = {block_size}: the trace's {hash_block}-token blocks map onto "
            f"engine blocks only when block_size divides {hash_block} (hash_block_size)")
    rows = read_trace(path, hash_block)
    check_prefix_ids(rows, path)
    given = [r.get("session_id") for r in rows]
    check_session_ids(rows, path)
    if all(g is not None for g in given):  # sessions as the file gives them
        names: dict[str, int] = {}
        session_of = [names.setdefault(str(g), i) for i, g in enumerate(given)]
    else:
        session_of = sessions(rows)
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(session_of):
        groups.setdefault(s, []).append(i)
    builder = PoolBuilder(block_size)
    dropped = 0
    kept_sessions = 0
    for s, members in tqdm(groups.items(), desc="hashing mooncake", unit="session", disable=not progress):
        if limit is not None and kept_sessions >= limit:
            break
        reqs, chains = [], []
        if given[members[0]] is not None:  # turn order as given, then time, then file order
            members = sorted(members, key=lambda i: (rows[i].get("turn", -1), rows[i]["timestamp"], i))
        for i in members:
            rec = rows[i]
            inp, out = int(rec["input_length"]), int(rec["output_length"])
            if not filters.keep_lengths(inp, out):
                dropped += 1
                continue
            if filters.max_turns and len(reqs) >= filters.max_turns:
                continue
            delay = rec.get("delay")
            reqs.append((int(rec.get("turn", len(reqs))), inp, out, float(rec["timestamp"]) / 1000.0,
                         float(delay) / 1000.0 if delay is not None else math.nan))
            chains.append(engine_chain(rec["hash_ids"], inp, block_size, hash_block))
        if reqs:
            name = str(given[members[0]]) if given[members[0]] is not None else f"mooncake-{s}"
            builder.add_requests(name, reqs, chains)
            kept_sessions += 1
    return builder.build({**meta, "rows": len(rows), "sessions": len(groups),
                          "rows_filtered_length": dropped})
