"""Held-out evaluation: MAE, MAPE, R2 (and pinball loss, coverage for quantile models).

Reported overall, per prompt-length bucket (edges 128/512/1024 tokens, where
prefill cost changes character) and per load level (terciles of the router's
in-flight requests on the evaluated rows), because a predictor that is good on
average but wrong under load is useless to a router.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

LENGTH_EDGES: tuple[int, ...] = (128, 512, 1024)


def split_indices(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random (train, test) row indices; ``test_fraction`` 0 puts every row in train."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test fraction must be in [0, 1), got {test_fraction!r}")
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def pinball_loss(y: np.ndarray, pred: np.ndarray, quantile: float) -> float:
    """Mean quantile loss (seconds): what a q-quantile prediction minimises."""
    diff = np.asarray(y, dtype=np.float64) - np.asarray(pred, dtype=np.float64)
    return float(np.mean(np.maximum(quantile * diff, (quantile - 1.0) * diff)))


def regression_metrics(y: np.ndarray, pred: np.ndarray, quantile: float | None = None) -> dict[str, float]:
    """MAE (s), MAPE (%, over rows with y > 1e-12 s), R2; plus pinball and coverage for quantiles."""
    y = np.asarray(y, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    err = pred - y
    out: dict[str, float] = {"n": float(len(y))}
    if len(y) == 0:
        return out | {"mae": np.nan, "mape_pct": np.nan, "r2": np.nan}
    positive = y > 1e-12
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    out["mae"] = float(np.mean(np.abs(err)))
    out["mape_pct"] = float(100.0 * np.mean(np.abs(err[positive]) / y[positive])) if positive.any() else np.nan
    out["r2"] = 1.0 - float(np.sum(err**2)) / ss_tot if ss_tot > 0 else np.nan
    if quantile is not None:
        out["pinball"] = pinball_loss(y, pred, quantile)
        out["coverage"] = float(np.mean(y <= pred))
    return out


def length_buckets(input_len: np.ndarray, edges: tuple[int, ...] = LENGTH_EDGES) -> np.ndarray:
    """Labels such as ``"<128"``, ``"128-511"``, ``">=1024"``."""
    labels = [f"<{edges[0]}"] + [f"{a}-{b - 1}" for a, b in zip(edges, edges[1:])] + [f">={edges[-1]}"]
    return np.array(labels, dtype=object)[np.searchsorted(edges, np.asarray(input_len), side="right")]


def load_levels(inflight: np.ndarray) -> np.ndarray:
    """Tercile labels of the in-flight request count (edges from these rows)."""
    inflight = np.asarray(inflight, dtype=np.float64)
    if len(inflight) == 0:
        return np.array([], dtype=object)
    lo, hi = np.quantile(inflight, [1 / 3, 2 / 3])
    labels = np.where(
        inflight <= lo, f"low (<={lo:g})", np.where(inflight <= hi, f"mid ({lo:g}-{hi:g}]", f"high (>{hi:g})")
    )
    return labels.astype(object)


def evaluation_report(
    X: pd.DataFrame, y: np.ndarray, pred: np.ndarray, quantile: float | None = None
) -> pd.DataFrame:
    """One row per slice: overall, each length bucket, each load level."""
    y = np.asarray(y, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    rows = [{"slice": "overall", "bucket": "all", **regression_metrics(y, pred, quantile)}]
    for slice_name, labels, order in (
        ("input_len", length_buckets(X["input_len"].to_numpy()), None),
        ("load", load_levels(X["inflight_requests"].to_numpy()), ("low", "mid", "high")),
    ):
        seen = list(dict.fromkeys(labels.tolist()))
        if order is None:
            seen.sort(key=lambda s: int(s.lstrip("<>=").split("-")[0]))
        else:
            seen.sort(key=lambda s: order.index(s.split(" ")[0]))
        for label in seen:
            mask = labels == label
            rows.append({"slice": slice_name, "bucket": label, **regression_metrics(y[mask], pred[mask], quantile)})
    frame = pd.DataFrame(rows)
    frame["n"] = frame["n"].astype(int)
    return frame


def format_table(frame: pd.DataFrame) -> str:
    """A fixed-width text table with 4 significant digits."""
    return frame.to_string(index=False, float_format=lambda v: f"{v:.4g}")
