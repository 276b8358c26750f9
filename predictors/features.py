"""The feature schema: named columns shared by profiling data, training and routing.

A latency model is only useful to a router if it is trained on exactly what the
router can see when it decides. These names are that contract; profiling data
(``python -m calibrate profile``), simulator/live records (``python -m predictors
dataset``) and the routing strategies all produce rows with these columns, and a
model file records the schema version it was trained on.

Bump ``FEATURE_SCHEMA_VERSION`` when a column is added, removed or changes meaning:
model files of another version then refuse to load instead of mispredicting.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import chain
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

FEATURE_SCHEMA_VERSION = 1

#: Numeric features in the order of a fast-path row (see ``FeatureEncoder.encode_rows``).
NUMERIC_FEATURES: tuple[str, ...] = (
    "input_len",  # prompt tokens
    "prefix_hit_tokens",  # router's estimate of the prefix-cache hit at this backend
    "inflight_requests",  # router's own in-flight count at this backend
    "inflight_tokens",  # router's own in-flight prompt tokens at this backend
    "running",  # last scraped vllm:num_requests_running (NaN if never scraped)
    "waiting",  # last scraped vllm:num_requests_waiting (NaN if never scraped)
    "kv_usage",  # last scraped vllm:kv_cache_usage_perc, a fraction (NaN if never scraped)
    "scrape_age_s",  # age of that scrape (inf if never scraped)
)
#: Features that may be missing (NaN or inf): imputed, with a 0/1 ``<name>_missing`` flag.
NULLABLE_FEATURES: tuple[str, ...] = ("running", "waiting", "kv_usage", "scrape_age_s")
#: The backend's group/profile name (categorical; the groups are stored in the model file).
GROUP_FEATURE = "group"
FEATURES: tuple[str, ...] = NUMERIC_FEATURES + (GROUP_FEATURE,)

#: Target names and their columns. TPOT (time between tokens, TBT in some papers) is defined when output_len > 1.
TARGETS: dict[str, str] = {"ttft": "ttft_s", "tpot": "tpot_s", "e2el": "e2el_s"}
#: Label columns that may be present besides the targets.
LABEL_COLUMNS: tuple[str, ...] = ("output_len", "cached_tokens")

_N_NUM = len(NUMERIC_FEATURES)
_NULL_AT = NUMERIC_FEATURES.index(NULLABLE_FEATURES[0])
# The fast path fills the nullable block as one slice.
assert NUMERIC_FEATURES[_NULL_AT:] == NULLABLE_FEATURES


class FeatureError(ValueError):
    """Data does not fit the feature schema (a column is missing or malformed)."""


def target_column(target: str) -> str:
    """``"ttft"`` or ``"ttft_s"`` -> ``"ttft_s"``; anything else fails naming the allowed ones."""
    if target in TARGETS:
        return TARGETS[target]
    if target in TARGETS.values():
        return target
    raise FeatureError(f"unknown target {target!r}; allowed: {', '.join(TARGETS)}")


def target_name(target: str) -> str:
    """``"ttft_s"`` or ``"ttft"`` -> ``"ttft"`` (the name model files record)."""
    column = target_column(target)
    return next(name for name, col in TARGETS.items() if col == column)


def check_columns(frame: pd.DataFrame, columns: Sequence[str], what: str = "data") -> None:
    """Fail naming every missing column, and what the schema expects."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise FeatureError(
            f"{what} lacks column(s) {', '.join(missing)}; the feature schema "
            f"(version {FEATURE_SCHEMA_VERSION}) needs {', '.join(FEATURES)}"
        )


def training_rows(frame: pd.DataFrame, target: str) -> tuple[pd.DataFrame, np.ndarray, int]:
    """Rows usable to learn ``target``: (features, y, number of rows dropped).

    Rows whose target is NaN or infinite are dropped (TPOT of one-token replies,
    failed requests), since there is nothing to learn from them.
    """
    column = target_column(target)
    check_columns(frame, list(FEATURES) + [column])
    y = pd.to_numeric(frame[column], errors="coerce").to_numpy(np.float64)
    keep = np.isfinite(y)
    return frame.loc[keep].reset_index(drop=True), y[keep], int((~keep).sum())


@dataclass
class FeatureEncoder:
    """Turns schema rows into the numeric matrix every model reads.

    Columns: the numeric features (missing ones imputed with ``fill``), one 0/1
    ``<name>_missing`` flag per nullable feature, then a one-hot column per group
    when the model knows more than one group (``onehot_always`` keeps them even
    for one group: the online learner adds groups as it meets them).
    """

    groups: list[str] = field(default_factory=list)
    fill: list[float] = field(default_factory=lambda: [0.0] * len(NULLABLE_FEATURES))
    onehot_always: bool = False

    def __post_init__(self) -> None:
        self.groups = [str(g) for g in self.groups]
        self.fill = [float(v) for v in self.fill]
        if len(self.fill) != len(NULLABLE_FEATURES):
            raise FeatureError(
                f"encoder needs {len(NULLABLE_FEATURES)} fill values "
                f"({', '.join(NULLABLE_FEATURES)}), got {len(self.fill)}"
            )
        self._refresh()

    def _refresh(self) -> None:
        self._index = {g: i for i, g in enumerate(self.groups)}
        self._fill_arr = np.asarray(self.fill, dtype=np.float64)
        self._onehot = self.onehot_always or len(self.groups) > 1
        k = len(self.groups) if self._onehot else 0
        self._eye = np.eye(k, dtype=np.float64)
        self.width = _N_NUM + len(NULLABLE_FEATURES) + k
        self._last_groups: list[str] | None = None
        self._last_tail = np.zeros((0, self.width - _N_NUM))

    # --- fitting --------------------------------------------------------------
    @classmethod
    def fit(cls, frame: pd.DataFrame, *, onehot_always: bool = False) -> FeatureEncoder:
        """Learn the groups and the imputation values (medians of what was seen)."""
        check_columns(frame, FEATURES)
        fill = []
        for name in NULLABLE_FEATURES:
            values = pd.to_numeric(frame[name], errors="coerce").to_numpy(np.float64)
            seen = values[np.isfinite(values)]
            fill.append(float(np.median(seen)) if len(seen) else 0.0)
        groups = sorted({str(g) for g in frame[GROUP_FEATURE]})
        return cls(groups=groups, fill=fill, onehot_always=onehot_always)

    def add_group(self, group: str) -> bool:
        """Append a group (for learners that meet groups as they go); False if known."""
        if group in self._index:
            return False
        self.groups.append(str(group))
        self._refresh()
        return True

    @property
    def names(self) -> list[str]:
        """Column names of the encoded matrix (for inspection and error messages)."""
        names = list(NUMERIC_FEATURES) + [f"{n}_missing" for n in NULLABLE_FEATURES]
        if self._onehot:
            names += [f"group={g}" for g in self.groups]
        return names

    # --- encoding -------------------------------------------------------------
    def group_positions(self, groups: Sequence[Any]) -> list[int]:
        """Each group's one-hot position; fails on a group the model never saw."""
        index = self._index
        try:
            return [index[g] for g in groups]
        except KeyError:
            unknown = sorted({str(g) for g in groups if g not in index})
            raise FeatureError(
                f"group(s) {', '.join(map(repr, unknown))} unknown to this model, which "
                f"knows {', '.join(map(repr, self.groups))}; retrain with data from those "
                "backends or name them after a known group"
            ) from None

    def encode_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """A DataFrame with the schema columns -> the encoded float64 matrix."""
        check_columns(frame, FEATURES)
        raw = np.empty((len(frame), _N_NUM), dtype=np.float64)
        for j, name in enumerate(NUMERIC_FEATURES):
            col = pd.to_numeric(frame[name], errors="coerce").to_numpy(np.float64)
            if j < _NULL_AT and not np.isfinite(col).all():
                bad = int((~np.isfinite(col)).sum())
                raise FeatureError(
                    f"column {name} has {bad} missing or non-numeric value(s); only "
                    f"{', '.join(NULLABLE_FEATURES)} may be missing"
                )
            raw[:, j] = col
        tail = np.zeros((len(frame), self.width - _N_NUM))
        if self._onehot:
            positions = self.group_positions(frame[GROUP_FEATURE].astype(str).tolist())
            tail[:, len(NULLABLE_FEATURES) :] = self._eye[positions]
        return np.hstack(self._impute(raw, tail))

    def split_rows(
        self, rows: Sequence[Sequence[float]], groups: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """The routing fast path, as ``(numeric columns, flag and group columns)``.

        ``rows`` are in ``NUMERIC_FEATURES`` order, one per backend. Lean on
        purpose (a router calls it on every request): rows are not validated
        beyond their width, and the second block is cached for the last list of
        groups (a router usually passes the same backends) and read-only. Models
        combine the two blocks without concatenating them.
        """
        n = len(rows)
        if n and len(rows[0]) != _N_NUM:
            raise FeatureError(f"a fast-path row has {_N_NUM} values ({', '.join(NUMERIC_FEATURES)})")
        raw = np.fromiter(chain.from_iterable(rows), dtype=np.float64, count=n * _N_NUM)
        raw = raw.reshape(n, _N_NUM)
        tail = self.group_tail(groups)
        # One reduction tells whether anything is NaN or infinite (the usual answer: no).
        if math.isfinite(raw.sum()):
            return raw, tail
        return self._impute(raw, tail.copy())

    def group_tail(self, groups: Sequence[str]) -> np.ndarray:
        """The flag/group block of rows with nothing missing (cached for the last groups, read-only)."""
        if groups != self._last_groups:
            tail = np.zeros((len(groups), self.width - _N_NUM))
            if self._onehot:
                tail[:, len(NULLABLE_FEATURES) :] = self._eye[self.group_positions(groups)]
            tail.flags.writeable = False
            self._last_tail, self._last_groups = tail, list(groups)
        return self._last_tail

    def encode_rows(self, rows: Sequence[Sequence[float]], groups: Sequence[str]) -> np.ndarray:
        """``split_rows`` as one matrix (columns as in ``names``)."""
        return np.hstack(self.split_rows(rows, groups))

    def _impute(self, raw: np.ndarray, tail: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fill missing nullable values in place and set their flags in ``tail``."""
        missing = ~np.isfinite(raw[:, _NULL_AT:])
        if missing.any():
            tail[:, : len(NULLABLE_FEATURES)] = missing
            np.copyto(raw[:, _NULL_AT:], self._fill_arr, where=missing)
        return raw, tail

    # --- files ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "groups": list(self.groups),
            "fill": {n: v for n, v in zip(NULLABLE_FEATURES, self.fill)},
            "onehot_always": self.onehot_always,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureEncoder:
        fill = data.get("fill", {})
        missing = [n for n in NULLABLE_FEATURES if n not in fill]
        if missing:
            raise FeatureError(f"encoder lacks fill values for {', '.join(missing)}")
        return cls(
            groups=list(data.get("groups", [])),
            fill=[float(fill[n]) for n in NULLABLE_FEATURES],
            onehot_always=bool(data.get("onehot_always", False)),
        )
