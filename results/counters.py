"""The engines' own counters over a unit, as a router scrapes them from ``/metrics``.

A request record carries what the *client* learned (``cached_tokens`` comes from
the response's usage, which vLLM fills only with ``--enable-prompt-tokens-details``),
so a prefix-cache hit rate from records alone is what the client saw. The rate an
operator watches, and the one a real router can compute, comes from the engine's
counters ``vllm:prefix_cache_queries`` and ``vllm:prefix_cache_hits`` (prompt tokens
looked up and found, counted once per request when the scheduler admits it; vLLM
0.32 ``KVCacheManager.record_prefix_cache_stats``). A router scrapes them as
cumulative totals and differences them: the hit rate over a unit is
``(hits_end - hits_start) / (queries_end - queries_start)``.

Both modes store those differences with the unit's records, in the Parquet file's
key-value metadata (``COUNTERS_KEY``), so the unit stays one file written
atomically: the simulator reads its engines' counters at the end of the unit (they
start at zero), live mode scrapes every backend's ``/metrics`` right before and
right after the unit. A file without them (older runs, a backend that does not
export them) reads as ``None`` and the metrics fall back to the records.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Key of the counters in a record file's Parquet key-value metadata.
COUNTERS_KEY = b"vllm_routing_lab.records.backend_counters"
#: The counters kept, as the fields of ``routing.ScrapedMetrics`` name them.
COUNTER_FIELDS = ("prefix_queries", "prefix_hits", "preemptions")


@dataclass(frozen=True, slots=True)
class BackendCounters:
    """One backend's counter increments over a unit (NaN: the backend did not export it)."""

    prefix_queries: float = math.nan  # vllm:prefix_cache_queries (prompt tokens looked up)
    prefix_hits: float = math.nan  # vllm:prefix_cache_hits (prompt tokens found cached)
    preemptions: float = math.nan  # vllm:num_preemptions

    @property
    def hit_rate(self) -> float:
        """``hits / queries``; NaN when nothing was looked up or the counters are missing."""
        q, h = self.prefix_queries, self.prefix_hits
        return h / q if q == q and h == h and q > 0 else math.nan

    def to_json(self) -> dict[str, float | None]:
        return {k: (None if v != v else float(v)) for k, v in
                ((f, getattr(self, f)) for f in COUNTER_FIELDS)}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> BackendCounters:
        return cls(**{f: (math.nan if doc.get(f) is None else float(doc[f])) for f in COUNTER_FIELDS})


@dataclass(frozen=True, slots=True)
class UnitCounters:
    """Every backend's counters over one unit (list index = record ``backend``)."""

    backends: tuple[BackendCounters, ...]
    #: How they were obtained, in words (shown in the report).
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        doc = {"version": 1, "source": self.source,
               "backends": [b.to_json() for b in self.backends], **self.extra}
        return json.dumps(doc, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> UnitCounters:
        doc = json.loads(raw)
        if not isinstance(doc, dict) or not isinstance(doc.get("backends"), list):
            raise ValueError("backend counters: expected an object with a 'backends' list")
        extra = {k: v for k, v in doc.items() if k not in ("version", "source", "backends")}
        return cls(tuple(BackendCounters.from_json(b) for b in doc["backends"]),
                   str(doc.get("source", "")), extra)

    @property
    def fleet_hit_rate(self) -> float:
        """Fleet-wide ``sum(hits) / sum(queries)`` over the backends that export both."""
        pairs = [(b.prefix_queries, b.prefix_hits) for b in self.backends
                 if b.prefix_queries == b.prefix_queries and b.prefix_hits == b.prefix_hits]
        q = sum(p[0] for p in pairs)
        return sum(p[1] for p in pairs) / q if pairs and q > 0 else math.nan


def difference(before: Sequence[Mapping[str, float]], after: Sequence[Mapping[str, float]],
               source: str) -> UnitCounters:
    """Counters over a unit from two scrapes of every backend (cumulative totals).

    ``before``/``after`` hold one mapping per backend with ``COUNTER_FIELDS`` keys (NaN or
    missing: not exported). A counter that went down was reset during the unit (a
    restarted server, an emulator reset): its increment is unknown, so NaN.
    """
    if len(before) != len(after):
        raise ValueError(f"{len(before)} scrapes before the unit but {len(after)} after")
    out = []
    for b, a in zip(before, after):
        values = {}
        for f in COUNTER_FIELDS:
            x, y = float(b.get(f, math.nan)), float(a.get(f, math.nan))
            values[f] = y - x if x == x and y == y and y >= x else math.nan
        out.append(BackendCounters(**values))
    return UnitCounters(tuple(out), source)


def read_counters(path: str | Path) -> UnitCounters | None:
    """The counters stored in a record file, or None when it has none."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata.metadata or {}
    raw = meta.get(COUNTERS_KEY)
    if raw is None:
        return None
    try:
        return UnitCounters.from_bytes(raw)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: unreadable backend counters in its metadata: {exc}") from None
