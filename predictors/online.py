"""One global linear model for the whole fleet, learnt online.

Each finished request gives (features the router saw, actual latency); the model
updates from the gap between that and its prediction. One model serves every
backend: the backend's load features and its group (a one-hot column added the
first time a group is met) say how backends differ.

- Mean (``quantile=None``): recursive least squares with forgetting factor
  ``forgetting`` (memory of about ``1 / (1 - forgetting)`` requests), so the
  model tracks drift. It is kept in information form, ``R = forgetting * R +
  x x' + (1 - forgetting) / prior_var * I`` and ``b = forgetting * b + x y``,
  ``theta = R^-1 b``: exactly exponentially weighted least squares plus a ridge
  that does *not* fade. Classic covariance-form RLS "winds up" in directions the
  data never excites (collinear one-hot groups and intercept, flags that are
  always 0): their variance grows by ``1/forgetting`` per step, and capping it
  (tried first) also froze the directions that matter, so the model stopped
  tracking shifts. The non-fading ridge bounds them instead, at the cost of one
  small linear solve per update (learning happens in ``observe``, off the
  decision path).
- Quantile: the same RLS mean plus an offset learnt by SGD on the pinball loss
  of the residuals (``offset += lr * spread * (q - [residual <= offset])``, with
  ``spread`` a running mean of ``|residual|`` so ``lr`` is unit-free). Pinball SGD
  on every weight, tried first, converged slower than RLS (docs/predictors.md,
  "Design notes"); the offset assumes the residual's
  tail is the same across backends, and tracks it as it drifts.

Features are divided by fixed scales (nominal ones at a cold start, the data's
standard deviations after ``fit``) so that one prior suits every column.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from predictors.base import Predictor
from predictors.features import (
    FEATURES,
    GROUP_FEATURE,
    NULLABLE_FEATURES,
    NUMERIC_FEATURES,
    FeatureEncoder,
    check_columns,
)

#: Typical magnitudes of the numeric features, used before any data is seen.
NOMINAL_SCALES: dict[str, float] = {
    "input_len": 1024.0,
    "prefix_hit_tokens": 1024.0,
    "inflight_requests": 8.0,
    "inflight_tokens": 8192.0,
    "running": 8.0,
    "waiting": 8.0,
    "kv_usage": 1.0,
    "scrape_age_s": 1.0,
}


class OnlineLinearPredictor(Predictor):
    """RLS with forgetting (mean) plus a pinball-SGD offset (quantile); works from a cold start."""

    kind = "online_linear"

    def __init__(
        self,
        *,
        target: str = "ttft",
        quantile: float | None = None,
        seed: int = 0,
        forgetting: float = 0.998,
        prior_var: float = 100.0,
        lr: float = 0.02,
    ) -> None:
        super().__init__(target=target, quantile=quantile, seed=seed)
        if not 0.0 < forgetting <= 1.0:
            raise ValueError(f"forgetting must be in (0, 1], got {forgetting!r}")
        if prior_var <= 0 or lr <= 0:
            raise ValueError("prior_var and lr must be positive")
        self.forgetting = float(forgetting)
        self.prior_var = float(prior_var)
        self.lr = float(lr)
        self.n_updates = 0
        self.offset = 0.0
        self.spread = 0.0
        self._reset(FeatureEncoder(onehot_always=True), [NOMINAL_SCALES[n] for n in NUMERIC_FEATURES])

    def _reset(self, encoder: FeatureEncoder, numeric_scales: Sequence[float]) -> None:
        self.encoder = encoder
        k = len(encoder.groups)
        self.scale = np.concatenate(
            [np.asarray(numeric_scales, dtype=np.float64), np.ones(len(NULLABLE_FEATURES) + k)]
        )
        dim = len(self.scale) + 1  # + intercept (last)
        self.theta = np.zeros(dim)
        self.R = np.eye(dim) / self.prior_var
        self.b = np.zeros(dim)
        self._w: np.ndarray | None = None
        self._ensured: list[str] | None = None
        self.n_updates = 0
        self.offset = 0.0
        self.spread = 0.0

    # --- groups met on the way --------------------------------------------------------
    def ensure_groups(self, groups: Sequence[str]) -> None:
        """Add a one-hot column (zero weight, only the prior) for each new group."""
        if groups == self._ensured:  # a router passes the same backends again and again
            return
        for g in groups:
            at = len(self.scale)  # a new column goes just before the intercept
            if self.encoder.add_group(g):
                self.scale = np.append(self.scale, 1.0)
                self.theta = np.insert(self.theta, at, 0.0)
                self.b = np.insert(self.b, at, 0.0)
                R = np.insert(np.insert(self.R, at, 0.0, axis=0), at, 0.0, axis=1)
                R[at, at] = 1.0 / self.prior_var
                self.R = R
                self._w = None
        self._ensured = list(groups)

    # --- the estimator interface ----------------------------------------------------------
    def _make_encoder(self, X: pd.DataFrame) -> FeatureEncoder:
        return FeatureEncoder.fit(X, onehot_always=True)

    def fit(self, X: pd.DataFrame, y) -> OnlineLinearPredictor:
        """Warm start: reset, then learn from the rows *in order* (as a stream)."""
        encoder = self._make_encoder(X)
        Z = encoder.encode_frame(X)
        std = Z[:, : len(NUMERIC_FEATURES)].std(axis=0)
        nominal = np.array([NOMINAL_SCALES[n] for n in NUMERIC_FEATURES])
        self._reset(encoder, np.where(std > 1e-12, std, nominal))
        y_arr = np.asarray(y, dtype=np.float64).reshape(-1)
        if len(y_arr) != len(Z) or not np.isfinite(y_arr).all():
            raise ValueError("y must hold one finite value per row of X")
        self._fit_encoded(Z, y_arr)
        return self

    def _fit_encoded(self, Z: np.ndarray, y: np.ndarray) -> None:
        for z, target in zip(tqdm(Z, desc="online_linear", unit="row", leave=False, disable=None), y):
            self.update_encoded(z, float(target))

    def partial_fit(self, X: pd.DataFrame, y) -> OnlineLinearPredictor:
        """Continue learning from more rows, keeping what was learnt."""
        self._ensure_frame_groups(X)
        y_arr = np.asarray(y, dtype=np.float64).reshape(-1)
        if len(y_arr) != len(X) or not np.isfinite(y_arr).all():
            raise ValueError("y must hold one finite value per row of X")
        self._fit_encoded(self.encoder.encode_frame(X), y_arr)
        return self

    def predict_rows(self, rows, groups) -> np.ndarray:
        self.ensure_groups(groups)
        return super().predict_rows(rows, groups)

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        self._ensure_frame_groups(X)
        return super().predict(X)

    def _ensure_frame_groups(self, X: pd.DataFrame) -> None:
        check_columns(X, FEATURES)
        self.ensure_groups(X[GROUP_FEATURE].astype(str).unique().tolist())

    def predict_encoded(self, Z: np.ndarray) -> np.ndarray:
        return Z @ self._weights() + (self.theta[-1] + self.offset)

    def predict_split(self, raw: np.ndarray, tail: np.ndarray) -> np.ndarray:
        w = self._weights()
        k = raw.shape[1]
        return raw @ w[:k] + tail @ w[k:] + (self.theta[-1] + self.offset)

    def _weights(self) -> np.ndarray:
        """Weights on raw encoded units (cached until the next update)."""
        if self._w is None:
            self._w = self.theta[:-1] / self.scale
        return self._w

    def update_encoded(self, z: np.ndarray, y: float) -> float:
        """Learn from one encoded row and its actual value; returns the prior prediction.

        ``z`` may be shorter than the current width (it was encoded before a new
        group was added): the missing one-hot columns are zero.
        """
        if not math.isfinite(y):
            raise ValueError(f"cannot learn from a non-finite target {y!r}")
        dim = len(self.theta)
        x = np.zeros(dim)
        x[: len(z)] = z
        x[: dim - 1] /= self.scale
        x[-1] = 1.0
        mean = float(self.theta @ x)
        residual = y - mean
        self._rls_step(x, y)
        prior = mean + self.offset
        if self.quantile is not None:
            self._offset_step(residual)
        self.n_updates += 1
        self._w = None
        return prior

    def _rls_step(self, x: np.ndarray, y: float) -> None:
        lam = self.forgetting
        R = self.R
        R *= lam
        R += np.outer(x, x)
        R.flat[:: len(x) + 1] += (1.0 - lam) / self.prior_var
        self.b *= lam
        self.b += y * x
        self.theta = np.linalg.solve(R, self.b)

    def _offset_step(self, residual: float) -> None:
        size = abs(residual)
        self.spread = size if self.n_updates == 0 else 0.99 * self.spread + 0.01 * size
        # Minus the pinball loss's gradient with respect to the offset.
        self.offset += self.lr * self.spread * (self.quantile - (residual <= self.offset))

    # --- files --------------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {
            "features": self.encoder.names + ["intercept"],
            "theta": self.theta.tolist(),
            "R": self.R.tolist(),
            "b": self.b.tolist(),
            "scale": self.scale.tolist(),
            "offset": self.offset,
            "spread": self.spread,
            "n_updates": self.n_updates,
        }, {}

    def _load_state(self, state: dict[str, Any], tensors: dict[str, np.ndarray]) -> None:
        names = self.encoder.names + ["intercept"]
        if state.get("features") != names:
            raise ValueError(f"online model's columns {state.get('features')} do not match {names}")
        missing = [k for k in ("theta", "R", "b", "scale") if k not in state]
        if missing:
            raise ValueError(f"online model file lacks {', '.join(missing)}")
        theta, R, b, scale = (np.asarray(state[k], dtype=np.float64) for k in ("theta", "R", "b", "scale"))
        d = len(names)
        if theta.shape != (d,) or b.shape != (d,) or R.shape != (d, d) or scale.shape != (d - 1,):
            raise ValueError("online model's theta, R, b and scale do not match its columns")
        self.theta, self.R, self.b, self.scale = theta, R, b, scale
        self._w = None
        self.offset = float(state.get("offset", 0.0))
        self.spread = float(state.get("spread", 0.0))
        self.n_updates = int(state.get("n_updates", 0))
