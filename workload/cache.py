"""On-disk cache of tokenized request pools (``.npz``, loaded with ``allow_pickle=False``).

Tokenizing a dataset is the slow part of building a trace; the result (lengths,
timestamps, block hash chains) is a few numpy arrays. The key covers everything
the arrays depend on: source, the file's identity (path, size, mtime) or Hub id,
tokenizer, block size, filters, how much was read, and the template version.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from workload.pool import RequestPool
from workload.trace import Trace

#: 2: pools carry the think times their dataset recorded (``think_s``).
FORMAT_VERSION = 2
ENV_VAR = "VLLM_LAB_CACHE"


def default_cache_dir() -> Path:
    """``$VLLM_LAB_CACHE/workload`` if set, else ``~/.cache/vllm-routing-lab/workload``."""
    root = os.environ.get(ENV_VAR)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "vllm-routing-lab"
    return base / "workload"


def resolve_cache_dir(cache_dir: str | os.PathLike | bool | None) -> Path | None:
    """``None`` -> the default; ``False`` -> caching off; else that folder."""
    if cache_dir is False:
        return None
    if cache_dir is None or cache_dir is True:
        return default_cache_dir()
    return Path(cache_dir).expanduser()


def cache_key(parts: dict[str, Any]) -> str:
    blob = json.dumps({"format": FORMAT_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def cache_file(cache_dir: Path, source: str, key: str) -> Path:
    return cache_dir / f"{source}-{key}.npz"


def save_pool(path: Path, pool: RequestPool) -> None:
    """Write atomically (a temporary file renamed into place), so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = pool.trace
    starts = pool.conv_starts
    conv_ids = t.conversation_id[starts[:-1]] if len(t) else np.zeros(0, dtype=object)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.savez(
            fh,
            conv_ids=np.asarray([str(c) for c in conv_ids], dtype=np.str_),
            conv_starts=starts,
            turn=t.turn,
            input_len=t.input_len,
            output_len=t.output_len,
            timestamp_s=t.timestamp_s,
            think_s=t.think_s,
            hash_offsets=t.hash_offsets,
            block_hashes=t.block_hashes,
            block_size=np.int64(t.block_size),
            meta=np.str_(json.dumps(pool.meta, default=str)),
        )
    os.replace(tmp, path)


def load_pool(path: Path) -> RequestPool | None:
    """The cached pool, or ``None`` if absent or unreadable (then it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            starts = z["conv_starts"]
            conv_ids = z["conv_ids"].astype(object)
            n = len(z["turn"])
            conv_of = np.repeat(np.arange(len(conv_ids)), np.diff(starts))
            meta = json.loads(str(z["meta"]))
            trace = Trace(
                request_id=np.arange(n, dtype=np.int64),
                conversation_id=conv_ids[conv_of] if n else np.zeros(0, dtype=object),
                turn=z["turn"],
                input_len=z["input_len"],
                output_len=z["output_len"],
                arrival_s=np.full(n, np.nan),
                timestamp_s=z["timestamp_s"],
                think_s=z["think_s"],
                hash_offsets=z["hash_offsets"],
                block_hashes=z["block_hashes"],
                block_size=int(z["block_size"]),
                meta=meta,
            )
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        warnings.warn(f"ignoring unreadable workload cache file {path} ({exc}); rebuilding", stacklevel=2)
        return None
    return RequestPool(trace, starts, meta)
