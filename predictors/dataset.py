"""Simulator/live run directories -> training rows, with the features as the router saw them.

Reads the run layout described in ``results/rundir.py`` directly (``manifest.json``
and ``records/point=*/strategy=*/seed=*.parquet``): ``predictors`` imports nothing
of this project, so it depends on the file layout, not on the ``results`` code.

Each ``ok`` record becomes one row: the ``router_*`` columns renamed to the
feature schema, the backend's group from the manifest
(``points[i].backends[backend].group``), and the targets
``ttft_s = first_token_s - arrival_s``, ``e2el_s = last_token_s - arrival_s``,
``tpot_s = (e2el_s - ttft_s) / (output_len - 1)`` (NaN when output_len <= 1),
as ``vllm bench serve`` defines them.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from predictors.features import FEATURES, GROUP_FEATURE, LABEL_COLUMNS, TARGETS

#: Record column -> feature name.
RECORD_FEATURES: dict[str, str] = {
    "input_len": "input_len",
    "router_prefix_hit_tokens": "prefix_hit_tokens",
    "router_inflight_requests": "inflight_requests",
    "router_inflight_tokens": "inflight_tokens",
    "router_running": "running",
    "router_waiting": "waiting",
    "router_kv_usage": "kv_usage",
    "router_scrape_age_s": "scrape_age_s",
}
#: Columns kept to trace a row back to its record.
ID_COLUMNS: tuple[str, ...] = ("point_id", "strategy", "seed", "request_id", "backend")
_TIMES = ("arrival_s", "first_token_s", "last_token_s")
_NEEDED = tuple(RECORD_FEATURES) + ID_COLUMNS + _TIMES + ("status", "output_len", "cached_tokens")


class RunDataError(ValueError):
    """The path is not a usable run directory."""


def backend_groups(manifest: dict) -> dict[tuple[str, int], str]:
    """``(point_id, backend index) -> group`` from a run manifest."""
    points = manifest.get("points")
    if not isinstance(points, list) or not points:
        raise RunDataError("manifest.json has no `points` list (with each point's backends)")
    groups: dict[tuple[str, int], str] = {}
    for i, point in enumerate(points):
        if "point_id" not in point or "backends" not in point:
            raise RunDataError(f"manifest point #{i} lacks `point_id` or `backends`")
        for b, backend in enumerate(point["backends"]):
            groups[(str(point["point_id"]), b)] = str(backend.get("group", "default"))
    return groups


def rows_from_records(records: pd.DataFrame, groups: dict[tuple[str, int], str]) -> pd.DataFrame:
    """``ok`` records -> schema rows + targets + labels + id columns."""
    missing = [c for c in _NEEDED if c not in records.columns]
    if missing:
        raise RunDataError(f"records lack column(s) {', '.join(missing)}")
    ok = records[records["status"] == "ok"]
    out = pd.DataFrame({feature: ok[col].to_numpy() for col, feature in RECORD_FEATURES.items()})
    keys = zip(ok["point_id"].astype(str), ok["backend"].astype(int))
    try:
        out[GROUP_FEATURE] = [groups[k] for k in keys]
    except KeyError as exc:
        point, backend = exc.args[0]
        raise RunDataError(
            f"record of point {point!r} names backend {backend}, which the manifest's point "
            "does not list"
        ) from None
    arrival = ok["arrival_s"].to_numpy(np.float64)
    ttft = ok["first_token_s"].to_numpy(np.float64) - arrival
    e2el = ok["last_token_s"].to_numpy(np.float64) - arrival
    n_out = ok["output_len"].to_numpy(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        tpot = np.where(n_out > 1, (e2el - ttft) / (n_out - 1), np.nan)
    out[TARGETS["ttft"]] = ttft
    out[TARGETS["tpot"]] = tpot
    out[TARGETS["e2el"]] = e2el
    for col in LABEL_COLUMNS:
        out[col] = ok[col].to_numpy()
    for col in ID_COLUMNS:
        out[col] = ok[col].to_numpy()
    return out[list(FEATURES) + list(TARGETS.values()) + list(LABEL_COLUMNS) + list(ID_COLUMNS)]


def run_rows(run: str | Path, strategies: Iterable[str] | None = None) -> pd.DataFrame:
    """Every ``ok`` request of a run directory as training rows (optionally some strategies)."""
    import pyarrow.parquet as pq

    run = Path(run)
    manifest_path = run / "manifest.json"
    if not manifest_path.is_file():
        raise RunDataError(
            f"{run} is not a run directory (no manifest.json); point at a folder written "
            "by `python -m sim` or `python -m live`"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise RunDataError(f"{manifest_path} is not valid JSON: {exc}") from None
    groups = backend_groups(manifest)
    files = sorted((run / "records").glob("point=*/strategy=*/seed=*.parquet"))
    if not files:
        raise RunDataError(f"{run} has no record files yet")
    wanted = set(strategies) if strategies else None
    parts = []
    for f in tqdm(files, desc="records", unit="file", leave=False, disable=None):
        try:
            records = pq.read_table(f, columns=list(_NEEDED)).to_pandas()
        except Exception as exc:  # pyarrow raises several types for bad files
            raise RunDataError(f"{f} is not a readable record file: {exc}") from None
        if wanted is not None:
            records = records[records["strategy"].isin(wanted)]
        parts.append(rows_from_records(records, groups))
    rows = pd.concat(parts, ignore_index=True)
    if wanted is not None and rows.empty:
        raise RunDataError(f"{run} has no ok records for strategies {', '.join(sorted(wanted))}")
    return rows
