"""CART regression trees, exported to flat arrays and evaluated without sklearn.

scikit-learn grows the tree; ``CompactTree`` keeps only what prediction needs
(children, split feature, threshold, leaf value) as JSON-able arrays. Its
predictions equal sklearn's bit for bit. sklearn compares the feature *rounded
to float32* with a float64 threshold; rounding is monotonic, so that test equals
``x <= cut`` for one float64 ``cut`` per node (``float64_cuts``), and the walk
compares the caller's float64 (or int) values directly, with no conversion. For
a handful of rows (one per backend) a plain Python walk beats numpy's per-call
overhead; for many rows the walk is vectorised level by level.

Quantile trees keep CART's squared-error splits and store, in each leaf, the
requested quantile of the training targets that fell there (the leaf-quantile
variant of quantile regression forests, with one tree), as the finite-sample
order statistic so that small leaves do not undercover.
"""
from __future__ import annotations

import math
from itertools import chain
from typing import Any

import numpy as np
import pandas as pd

from predictors.base import Predictor
from predictors.features import NUMERIC_FEATURES

#: Below this many rows the Python walk is faster than the vectorised one.
_PY_ROWS = 48
_HALF_ULP_OF_MAX_FLOAT32 = 2.0**103


def float64_cuts(threshold: np.ndarray) -> np.ndarray:
    """Per threshold ``t``: the largest float64 ``c`` with ``float32(x) <= t  <=>  x <= c``.

    ``a`` is the largest float32 not above ``t``; every float64 below the midpoint
    between ``a`` and the next float32 rounds to ``a`` or lower, and the midpoint
    itself rounds to whichever of the two is even (round-half-to-even).
    """
    t = np.asarray(threshold, dtype=np.float64)
    a = t.astype(np.float32)
    over = a.astype(np.float64) > t
    a[over] = np.nextafter(a[over], np.float32(-np.inf))
    a64 = a.astype(np.float64)
    b64 = np.nextafter(a, np.float32(np.inf)).astype(np.float64)
    half = np.where(np.isinf(b64), _HALF_ULP_OF_MAX_FLOAT32, (b64 - a64) / 2)
    mid = a64 + half  # exact: float32 neighbours and their midpoint fit in float64
    even = (a.view(np.uint32) & 1) == 0
    return np.where(even, mid, np.nextafter(mid, -np.inf))


class CompactTree:
    """A fitted binary regression tree as flat arrays (leaves have ``left == -1``)."""

    __slots__ = ("left", "right", "feature", "threshold", "value", "cut", "_lists", "_nodes")

    def __init__(self, left, right, feature, threshold, value) -> None:
        self.left = np.asarray(left, dtype=np.int64)
        self.right = np.asarray(right, dtype=np.int64)
        self.feature = np.asarray(feature, dtype=np.int64)
        self.threshold = np.asarray(threshold, dtype=np.float64)
        self.value = np.asarray(value, dtype=np.float64)
        n = len(self.left)
        if not all(len(a) == n for a in (self.right, self.feature, self.threshold, self.value)):
            raise ValueError("tree arrays must all have one entry per node")
        # Children must come after their parent (as sklearn numbers them): this also
        # guarantees that a walk from the root ends, whatever a file holds.
        idx = np.arange(n)
        internal = self.left >= 0
        for child in (self.left[internal], self.right[internal]):
            if (child <= idx[internal]).any() or (child >= n).any():
                raise ValueError("tree has a child index that is not after its parent")
        if n == 0:
            raise ValueError("tree has no nodes")
        self._lists = (
            self.left.tolist(), self.right.tolist(), self.feature.tolist(),
            self.threshold.tolist(), self.value.tolist(),
        )
        self.cut = float64_cuts(self.threshold)
        left, right, feature, _, _ = self._lists
        cut = self.cut.tolist()
        # For the Python walk: (feature, cut, left, right) per split, None per leaf.
        self._nodes = [(feature[i], cut[i], left[i], right[i]) if left[i] >= 0 else None for i in range(n)]

    @classmethod
    def from_sklearn(cls, estimator: Any, leaf_values: np.ndarray | None = None) -> CompactTree:
        t = estimator.tree_
        value = t.value[:, 0, 0] if leaf_values is None else leaf_values
        return cls(t.children_left, t.children_right, t.feature, t.threshold, value)

    @property
    def n_nodes(self) -> int:
        return len(self.left)

    @property
    def depth(self) -> int:
        depth = np.zeros(self.n_nodes, dtype=np.int64)
        for node in range(self.n_nodes):  # children always follow their parent
            if self.left[node] >= 0:
                depth[self.left[node]] = depth[self.right[node]] = depth[node] + 1
        return int(depth.max()) if self.n_nodes else 0

    def apply(self, Z: np.ndarray) -> np.ndarray:
        """The leaf each row lands in (same ids as sklearn's ``apply``)."""
        Z = np.asarray(Z, dtype=np.float64)
        n = Z.shape[0]
        if n <= _PY_ROWS:
            return np.array(self.walk(Z.tolist(), leaves=True), dtype=np.int64)
        left, right, feature, cut = self.left, self.right, self.feature, self.cut
        node = np.zeros(n, dtype=np.int64)
        rows = np.nonzero(left[node] >= 0)[0]
        while len(rows):
            nd = node[rows]
            go_left = Z[rows, feature[nd]] <= cut[nd]
            node[rows] = np.where(go_left, left[nd], right[nd])
            rows = rows[left[node[rows]] >= 0]
        return node

    def predict(self, Z: np.ndarray) -> np.ndarray:
        Z = np.asarray(Z, dtype=np.float64)
        if Z.shape[0] <= _PY_ROWS:
            return np.array(self.walk(Z.tolist(), leaves=False), dtype=np.float64)
        return self.value[self.apply(Z)]

    def walk(self, rows: list, *, leaves: bool = False) -> list:
        """Leaf values (or ids) of rows given as Python sequences of encoded columns."""
        nodes = self._nodes
        root = nodes[0]
        leaf_ids = []
        for x in rows:
            i = 0
            node = root
            while node is not None:
                f, t, left, right = node
                i = left if x[f] <= t else right
                node = nodes[i]
            leaf_ids.append(i)
        if leaves:
            return leaf_ids
        value = self._lists[4]
        return [value[i] for i in leaf_ids]

    def to_dict(self) -> dict[str, list]:
        left, right, feature, threshold, value = self._lists
        return {"left": left, "right": right, "feature": feature, "threshold": threshold, "value": value}

    @classmethod
    def from_dict(cls, data: dict[str, list]) -> CompactTree:
        missing = [k for k in ("left", "right", "feature", "threshold", "value") if k not in data]
        if missing:
            raise ValueError(f"tree lacks array(s) {', '.join(missing)}")
        return cls(data["left"], data["right"], data["feature"], data["threshold"], data["value"])


def fit_tree(
    Z: np.ndarray,
    y: np.ndarray,
    *,
    max_depth: int,
    min_samples_leaf: int,
    seed: int,
    quantile: float | None = None,
) -> tuple[CompactTree, Any]:
    """Grow a CART tree with sklearn; returns (compact tree, the sklearn estimator)."""
    from sklearn.tree import DecisionTreeRegressor

    est = DecisionTreeRegressor(
        max_depth=max_depth, min_samples_leaf=min_samples_leaf, random_state=seed
    )
    est.fit(Z, y)
    leaf_values = None
    if quantile is not None:
        leaves = est.apply(np.asarray(Z, dtype=np.float32))
        leaf_values = est.tree_.value[:, 0, 0].copy()
        for leaf, values in pd.Series(y).groupby(leaves):
            leaf_values[leaf] = leaf_quantile(values.to_numpy(), quantile)
    return CompactTree.from_sklearn(est, leaf_values), est


def leaf_quantile(values: np.ndarray, quantile: float) -> float:
    """The ceil((n+1)q)-th smallest of n values (the largest if that is beyond n).

    The plain sample quantile of a small leaf undercovers (a new value falls
    below the 0.9 quantile of 20 values about 86% of the time); this order
    statistic is the finite-sample-exact one for exchangeable values.
    """
    ordered = np.sort(values)
    k = min(int(np.ceil((len(ordered) + 1) * quantile)), len(ordered))
    return float(ordered[k - 1])


class TreeModel(Predictor):
    """Base of models that predict with one ``CompactTree`` (``self.tree``)."""

    tree: CompactTree | None
    _tail_src: np.ndarray | None = None
    _tail_rows: list = []

    def predict_encoded(self, Z: np.ndarray) -> np.ndarray:
        return self.tree.predict(Z)

    def predict_rows(self, rows, groups) -> np.ndarray:
        """Walk the caller's own rows when nothing is missing: no array round trip."""
        n = len(rows)
        # Python's sum runs in C; NaN or inf anywhere makes it non-finite.
        if 0 < n <= _PY_ROWS and type(rows[0]) is tuple and len(rows[0]) == len(NUMERIC_FEATURES) \
                and math.isfinite(sum(chain.from_iterable(rows))):
            tail = self._fitted_encoder().group_tail(groups)
            if tail is not self._tail_src:  # the encoder's cached block, while the backends stay
                self._tail_src, self._tail_rows = tail, [tuple(r) for r in tail.tolist()]
            return np.array(self.tree.walk([a + b for a, b in zip(rows, self._tail_rows)]))
        return super().predict_rows(rows, groups)


class TreePredictor(TreeModel):
    """A single CART tree; quantile variant stores leaf quantiles."""

    kind = "tree"

    def __init__(
        self,
        *,
        target: str = "ttft",
        quantile: float | None = None,
        seed: int = 0,
        max_depth: int = 8,
        min_samples_leaf: int = 20,
    ) -> None:
        super().__init__(target=target, quantile=quantile, seed=seed)
        self.max_depth = int(max_depth)
        self.min_samples_leaf = int(min_samples_leaf)
        self.tree: CompactTree | None = None

    def _fit_encoded(self, Z: np.ndarray, y: np.ndarray) -> None:
        self.tree, _ = fit_tree(
            Z, y, max_depth=self.max_depth, min_samples_leaf=self.min_samples_leaf,
            seed=self.seed, quantile=self.quantile,
        )

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"tree": self.tree.to_dict(), "features": self._fitted_encoder().names}, {}

    def _load_state(self, state: dict[str, Any], tensors: dict[str, np.ndarray]) -> None:
        self.tree = load_tree_state(state, self._fitted_encoder().names)


def load_tree_state(state: dict[str, Any], names: list[str]) -> CompactTree:
    """Restore a tree, checking it was grown on the encoder's columns."""
    if state.get("features") != names:
        raise ValueError(
            "tree file's feature columns do not match its encoder: "
            f"{state.get('features')} vs {names}"
        )
    tree = CompactTree.from_dict(state["tree"])
    used = tree.feature[tree.left >= 0]
    if len(used) and (used.min() < 0 or used.max() >= len(names)):
        raise ValueError(f"tree splits on a feature index outside 0..{len(names) - 1}")
    return tree
