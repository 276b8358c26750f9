"""Length buckets: requests grouped by prompt length, with per-bucket statistics.

Edges ``[128, 512, 1024]`` give the buckets ``<128``, ``128-511``, ``512-1023`` and
``>=1024`` (input tokens), the split the results report uses to show where a
policy wins or loses.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_EDGES = (128, 512, 1024)


def check_edges(edges: Sequence[int]) -> tuple[int, ...]:
    edges = tuple(int(e) for e in edges)
    if not edges or any(e <= 0 for e in edges) or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"bucket edges must be positive and strictly increasing, got {list(edges)}")
    return edges


def bucket_labels(edges: Sequence[int] = DEFAULT_EDGES) -> list[str]:
    edges = check_edges(edges)
    labels = [f"<{edges[0]}"]
    labels += [f"{a}-{b - 1}" for a, b in zip(edges, edges[1:])]
    labels.append(f">={edges[-1]}")
    return labels


def bucket_index(input_len: np.ndarray, edges: Sequence[int] = DEFAULT_EDGES) -> np.ndarray:
    """Bucket number of each length: 0 for ``< edges[0]``, ..., ``len(edges)`` for ``>= edges[-1]``."""
    return np.searchsorted(np.asarray(check_edges(edges)), np.asarray(input_len), side="right")


@dataclass(frozen=True)
class BucketStats:
    label: str
    count: int
    share: float
    input_mean: float
    input_p50: float
    input_p90: float
    output_mean: float
    output_p50: float
    output_p90: float


def _summary(x: np.ndarray) -> tuple[float, float, float]:
    if len(x) == 0:
        return (float("nan"),) * 3
    return float(x.mean()), float(np.percentile(x, 50)), float(np.percentile(x, 90))


def bucket_stats(
    input_len: np.ndarray, output_len: np.ndarray, edges: Sequence[int] = DEFAULT_EDGES
) -> list[BucketStats]:
    """One row per bucket, then an ``all`` row."""
    inp = np.asarray(input_len, dtype=np.float64)
    out = np.asarray(output_len, dtype=np.float64)
    idx = bucket_index(inp, edges)
    n = max(len(inp), 1)
    rows = []
    for b, label in enumerate([*bucket_labels(edges), "all"]):
        sel = idx == b if label != "all" else np.ones(len(inp), dtype=bool)
        rows.append(
            BucketStats(label, int(sel.sum()), float(sel.sum()) / n, *_summary(inp[sel]), *_summary(out[sel]))
        )
    return rows


def format_bucket_table(rows: Sequence[BucketStats]) -> str:
    """A plain-text table (what ``python -m workload prepare`` prints)."""
    head = ("bucket", "requests", "share", "in mean", "in p50", "in p90", "out mean", "out p50", "out p90")
    body = [
        (
            r.label, f"{r.count}", f"{100 * r.share:.1f}%",
            *(f"{v:.0f}" if v == v else "-" for v in (
                r.input_mean, r.input_p50, r.input_p90, r.output_mean, r.output_p50, r.output_p90
            )),
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(head)]

    def fmt(cells) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        )

    lines = [fmt(head), "  ".join("-" * w for w in widths)]
    lines += [fmt(row) for row in body]
    return "\n".join(lines)
