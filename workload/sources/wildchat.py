"""WildChat (``allenai/WildChat-1M``, ODC-BY) through HuggingFace ``datasets``, streamed.

The Hub dataset or local Parquet/JSONL files (or a folder of them, e.g. a
downloaded snapshot of the repository) in WildChat's schema: ``conversation_hash``,
``timestamp``, ``conversation: [{role, content, timestamp, ...}]``, ``language``,
``toxic``, ``redacted``... Both go through ``datasets.load_dataset(...,
streaming=True)``, so nothing is materialised and ``max_conversations`` bounds
what is read. When the Hub is not usable the loader says so within seconds.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from workload.conversation import Conversation, normalize_role, to_epoch_seconds
from workload.hub import hub_unavailable_reason

PARQUET_SUFFIXES = (".parquet",)
JSON_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")


class DatasetUnavailable(RuntimeError):
    """The dataset cannot be read here; the message says what to do."""


def local_files(path: str) -> tuple[str, list[Path]]:
    """The ``datasets`` builder (``"parquet"`` or ``"json"``) and files for ``path``."""
    p = Path(path).expanduser()
    if p.is_dir():
        parquet = sorted(f for f in p.rglob("*") if f.name.endswith(PARQUET_SUFFIXES))
        if parquet:
            return "parquet", parquet
        jsonl = sorted(f for f in p.rglob("*") if f.name.endswith(JSON_SUFFIXES))
        if jsonl:
            return "json", jsonl
        raise FileNotFoundError(
            f"[workload].path: folder {str(p)!r} has no WildChat files "
            f"(*.parquet, *.jsonl or *.json, searched recursively)"
        )
    if not p.is_file():
        raise FileNotFoundError(f"[workload].path: {str(p)!r} does not exist")
    if p.name.endswith(PARQUET_SUFFIXES):
        return "parquet", [p]
    if p.name.endswith(JSON_SUFFIXES):
        return "json", [p]
    raise ValueError(
        f"[workload].path: {str(p)!r} is neither Parquet nor JSON Lines; expected a file ending "
        f"in {', '.join(PARQUET_SUFFIXES + JSON_SUFFIXES)} or a folder of them"
    )


def wildchat_identity(path: str, dataset: str, split: str) -> dict[str, Any]:
    """What the cache key needs: local files' stats, or the Hub id and split."""
    if path:
        kind, files = local_files(path)
        return {
            "kind": kind,
            "files": [
                {"path": str(f.resolve()), "size": f.stat().st_size, "mtime_ns": f.stat().st_mtime_ns}
                for f in files
            ],
        }
    # No Hub revision in the key: a pool built online must still be found offline.
    # WildChat-1M is a fixed release; delete the cache file to pick up a changed copy.
    return {"hub": dataset, "split": split}


def _unavailable(dataset: str, split: str, reason: str) -> DatasetUnavailable:
    return DatasetUnavailable(
        f"WildChat dataset {dataset!r} (split {split!r}) is not available: {reason}. "
        f"What to do: (1) where there is network, download it, e.g. "
        f"`huggingface-cli download {dataset} --repo-type dataset --local-dir wildchat`, "
        f"copy the folder here and set [workload] path = \"wildchat\" (a folder or a "
        f"Parquet/JSONL file in WildChat's schema); or (2) if it is already in the "
        f"HuggingFace cache (HF_HOME), set HF_HUB_OFFLINE=1 and HF_DATASETS_OFFLINE=1 so "
        f"it is read from there; or (3) use source = \"sharegpt\", which works offline."
    )


def open_records(path: str, dataset: str, split: str) -> Iterable[dict[str, Any]]:
    """The raw records, streamed by ``datasets`` (lazy: nothing is read yet)."""
    import datasets

    if path:
        kind, files = local_files(path)
        return datasets.load_dataset(
            kind, data_files=[str(f) for f in files], split="train", streaming=True
        )
    reason = hub_unavailable_reason()
    if reason and not reason.startswith("offline mode"):
        raise _unavailable(dataset, split, reason)
    try:  # read the first record now, so a missing dataset fails here, not mid-run
        it = iter(datasets.load_dataset(dataset, split=split, streaming=True))
        first = next(it)
    except StopIteration:
        return []
    except Exception as exc:  # datasets raises ConnectionError, FileNotFoundError, ...
        raise _unavailable(dataset, split, reason or f"{type(exc).__name__}: {exc}") from exc
    return itertools.chain([first], it)


def _field(rec: dict[str, Any], name: str, where: str) -> Any:
    if name not in rec:
        raise ValueError(
            f"{where}: missing field {name!r}; expected WildChat's schema (conversation_hash, "
            f"timestamp, conversation, turn, language, toxic, redacted, ...)"
        )
    return rec[name]


def to_conversation(rec: dict[str, Any], index: int) -> Conversation:
    where = f"WildChat record {index}"
    cid = rec.get("conversation_hash") or rec.get("conversation_id")
    if not cid:
        raise ValueError(f"{where}: missing field 'conversation_hash'")
    messages = _field(rec, "conversation", where)
    roles, texts, stamps = [], [], []
    for msg in messages or []:
        roles.append(normalize_role(_field(msg, "role", where), where))
        texts.append(msg.get("content") or "")
        stamps.append(to_epoch_seconds(msg.get("timestamp")))
    return Conversation(
        conversation_id=str(cid),
        roles=roles,
        texts=texts,
        timestamps=stamps,
        timestamp=to_epoch_seconds(rec.get("timestamp")),
        language=rec.get("language"),
        toxic=bool(rec.get("toxic")) if rec.get("toxic") is not None else None,
        redacted=bool(rec.get("redacted")) if rec.get("redacted") is not None else None,
    )


def iter_wildchat(records: Iterable[dict[str, Any]]) -> Iterator[Conversation]:
    for i, rec in enumerate(records):
        conv = to_conversation(rec, i)
        if math.isnan(conv.timestamp) and conv.timestamps:
            finite = [t for t in conv.timestamps if math.isfinite(t)]
            conv.timestamp = max(finite) if finite else math.nan
        yield conv
