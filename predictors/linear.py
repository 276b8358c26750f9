"""The baseline: a linear model over the encoded features.

Mean models are ridge regression (a tiny L2 penalty keeps the one-hot groups and
missing flags identifiable). Quantile models minimise the pinball loss with
scikit-learn's ``QuantileRegressor`` (a linear program, exact). Both are fitted on
standardised columns and then folded back, so the file holds plain weights on raw
feature units and a prediction is one dot product.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from predictors.base import Predictor, column_scaling


class LinearPredictor(Predictor):
    """``y = Z @ coef + intercept``; ``alpha`` is the L2 (mean) or L1 (quantile) penalty."""

    kind = "linear"

    def __init__(
        self,
        *,
        target: str = "ttft",
        quantile: float | None = None,
        seed: int = 0,
        alpha: float = 1e-6,
        max_quantile_rows: int = 10000,
    ) -> None:
        super().__init__(target=target, quantile=quantile, seed=seed)
        self.alpha = float(alpha)
        #: The quantile LP grows with rows; a seeded subsample keeps training in seconds.
        self.max_quantile_rows = int(max_quantile_rows)
        self.coef = np.zeros(0)
        self.intercept = 0.0
        self._tail_src: np.ndarray | None = None

    def _fit_encoded(self, Z: np.ndarray, y: np.ndarray) -> None:
        mean, scale = column_scaling(Z)
        S = (Z - mean) / scale
        if self.quantile is None:
            w, b = _ridge(S, y, self.alpha)
        else:
            w, b = self._pinball_fit(S, y)
        self.coef = w / scale
        self.intercept = float(b - np.dot(self.coef, mean))
        self._tail_src = None

    def _pinball_fit(self, S: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
        from sklearn.linear_model import QuantileRegressor

        if len(y) > self.max_quantile_rows:
            rng = np.random.default_rng(self.seed)
            keep = rng.choice(len(y), self.max_quantile_rows, replace=False)
            S, y = S[keep], y[keep]
        reg = QuantileRegressor(quantile=self.quantile, alpha=self.alpha, solver="highs")
        reg.fit(S, y)
        return np.asarray(reg.coef_, dtype=np.float64), float(reg.intercept_)

    def predict_encoded(self, Z: np.ndarray) -> np.ndarray:
        return Z @ self.coef + self.intercept

    def predict_split(self, raw: np.ndarray, tail: np.ndarray) -> np.ndarray:
        k = raw.shape[1]
        if tail is not self._tail_src:  # the encoder's cached block, while the backends stay
            self._tail_src, self._tail_part = tail, tail @ self.coef[k:] + self.intercept
            self._head = self.coef[:k].copy()
        return raw @ self._head + self._tail_part

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        names = self._fitted_encoder().names
        return {"intercept": self.intercept, "coef": dict(zip(names, self.coef.tolist()))}, {}

    def _load_state(self, state: dict[str, Any], tensors: dict[str, np.ndarray]) -> None:
        coef = state["coef"]
        names = self._fitted_encoder().names
        missing = [n for n in names if n not in coef]
        if missing:
            raise ValueError(f"linear model file lacks coefficients for {', '.join(missing)}")
        self.coef = np.array([coef[n] for n in names], dtype=np.float64)
        self.intercept = float(state["intercept"])
        self._tail_src = None


def _ridge(S: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """Ridge on standardised columns; the intercept is not penalised."""
    n, d = S.shape
    y_mean = y.mean()
    gram = S.T @ S + alpha * n * np.eye(d)
    w = np.linalg.lstsq(gram, S.T @ (y - y_mean), rcond=None)[0]
    return w, float(y_mean)
