"""The one interface every latency model shares: ``fit(X, y)`` / ``predict(X)``.

Like scikit-learn's estimators, swapping a linear model for a tree is a config
string. Unlike them, every model also has a routing fast path,
``predict_rows(rows, groups)``, that skips pandas and per-call validation: a router
asks for one prediction per backend on every request, and sklearn's ``predict``
costs more per call than the whole decision budget.
"""
from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from predictors.features import FeatureEncoder, FeatureError, target_name


def check_quantile(quantile: float | None) -> float | None:
    """``None`` (predict the mean) or a level strictly between 0 and 1."""
    if quantile is None:
        return None
    q = float(quantile)
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile must be strictly between 0 and 1 (e.g. 0.9), got {quantile!r}")
    return q


def column_scaling(Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and scale (std, or 1 for constant columns) for standardising."""
    mean = Z.mean(axis=0)
    scale = Z.std(axis=0)
    scale[~(scale > 1e-12)] = 1.0
    return mean, scale


class Predictor:
    """Base class of latency models over the feature schema.

    Subclasses set ``kind`` and implement ``_fit_encoded``, ``predict_encoded``,
    ``_state`` and ``_load_state``. Hyperparameters are the keyword arguments of
    ``__init__`` (besides ``target``, ``quantile`` and ``seed``), stored as
    attributes of the same name so a model file can rebuild the object.
    """

    kind: ClassVar[str] = ""
    #: ".json" for models stored as plain JSON, ".safetensors" for neural nets.
    file_suffix: ClassVar[str] = ".json"

    def __init__(self, *, target: str = "ttft", quantile: float | None = None, seed: int = 0) -> None:
        self.target = target_name(target)
        self.quantile = check_quantile(quantile)
        self.seed = int(seed)
        self.encoder: FeatureEncoder | None = None
        #: Where the model came from (data file, split, rows, metrics...): written to the file.
        self.provenance: dict[str, Any] = {}

    # --- the estimator interface --------------------------------------------------
    def fit(self, X: pd.DataFrame, y: Sequence[float] | np.ndarray | pd.Series) -> Predictor:
        """Learn from schema rows ``X`` and finite target values ``y`` (seconds)."""
        y_arr = np.asarray(y, dtype=np.float64).reshape(-1)
        if len(y_arr) != len(X):
            raise FeatureError(f"X has {len(X)} rows but y has {len(y_arr)} values")
        if len(y_arr) == 0:
            raise FeatureError("cannot fit a model on zero rows")
        if not np.isfinite(y_arr).all():
            raise FeatureError(
                "y has NaN or infinite values; drop them first (predictors.features.training_rows)"
            )
        self.encoder = self._make_encoder(X)
        self._fit_encoded(self.encoder.encode_frame(X), y_arr)
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """Predicted target (seconds) for each schema row of ``X``."""
        return self.predict_encoded(self._fitted_encoder().encode_frame(X))

    def predict_rows(self, rows: Sequence[Sequence[float]], groups: Sequence[str]) -> np.ndarray:
        """Fast path: rows in ``NUMERIC_FEATURES`` order (one per backend) plus their groups."""
        raw, tail = self._fitted_encoder().split_rows(rows, groups)
        return self.predict_split(raw, tail)

    def predict_split(self, raw: np.ndarray, tail: np.ndarray) -> np.ndarray:
        """Predict from ``FeatureEncoder.split_rows`` blocks; models override to skip the join."""
        return self.predict_encoded(np.hstack([raw, tail]))

    def predict_encoded(self, Z: np.ndarray) -> np.ndarray:
        """Predict from the encoded matrix (columns as in ``encoder.names``)."""
        raise NotImplementedError

    def _fit_encoded(self, Z: np.ndarray, y: np.ndarray) -> None:
        raise NotImplementedError

    def _make_encoder(self, X: pd.DataFrame) -> FeatureEncoder:
        return FeatureEncoder.fit(X)

    def _fitted_encoder(self) -> FeatureEncoder:
        if self.encoder is None:
            raise RuntimeError(f"this {self.kind} model is not fitted yet; call fit(X, y) first")
        return self.encoder

    # --- files ----------------------------------------------------------------------
    @classmethod
    def param_names(cls) -> list[str]:
        """Hyperparameter names (the keyword arguments of ``__init__``)."""
        names = []
        for p in inspect.signature(cls.__init__).parameters.values():
            if p.name not in ("self", "target", "quantile", "seed") and p.kind == p.KEYWORD_ONLY:
                names.append(p.name)
        return names

    def get_params(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.param_names()}

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(JSON-able state, named arrays) that ``_load_state`` restores."""
        raise NotImplementedError

    def _load_state(self, state: dict[str, Any], tensors: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def save(self, path: str) -> Any:
        """Write this model to ``path`` (see ``predictors.modelfile``)."""
        from predictors.modelfile import save_model

        return save_model(self, path)

    def __repr__(self) -> str:
        q = "" if self.quantile is None else f", quantile={self.quantile}"
        return f"{type(self).__name__}(target={self.target!r}{q})"

