"""Model kinds by name, so a model family is a config string (``--model tree``)."""
from __future__ import annotations

import json
from typing import Any

from predictors.base import Predictor
from predictors.distill import DistilledTreePredictor
from predictors.linear import LinearPredictor
from predictors.mlp import MLPPredictor
from predictors.online import OnlineLinearPredictor
from predictors.transformer import TransformerPredictor
from predictors.tree import TreePredictor

MODEL_KINDS: dict[str, type[Predictor]] = {
    cls.kind: cls
    for cls in (
        LinearPredictor,
        TreePredictor,
        MLPPredictor,
        TransformerPredictor,
        DistilledTreePredictor,
        OnlineLinearPredictor,
    )
}


def model_class(kind: str) -> type[Predictor]:
    try:
        return MODEL_KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown model kind {kind!r}; available: {', '.join(MODEL_KINDS)}") from None


def make_model(
    kind: str, *, target: str = "ttft", quantile: float | None = None, seed: int = 0, **params: Any
) -> Predictor:
    """Build an unfitted model; unknown hyperparameters fail naming the allowed ones."""
    cls = model_class(kind)
    allowed = cls.param_names()
    unknown = [k for k in params if k not in allowed]
    if unknown:
        raise ValueError(
            f"{kind!r} models have no parameter(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(allowed) or '(none)'}"
        )
    return cls(target=target, quantile=quantile, seed=seed, **params)


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """``["max_depth=8", "hidden=[32,32]"]`` -> values parsed as JSON, else kept as text."""
    params: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--param expects KEY=VALUE, got {item!r}")
        try:
            params[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            params[key.strip()] = text
    return params
