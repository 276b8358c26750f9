"""Latency predictors over a shared, versioned feature schema.

``make_model("tree", target="ttft", quantile=0.9).fit(X, y)`` trains a model on
schema rows; ``save_model``/``load_model`` keep it in a safe file (JSON or
safetensors, never pickle); ``model.predict_rows(rows, groups)`` is the fast path
routing strategies call once per decision. ``python -m predictors --help`` for
the command line.
"""
from predictors.base import Predictor
from predictors.features import (
    FEATURE_SCHEMA_VERSION,
    FEATURES,
    NULLABLE_FEATURES,
    NUMERIC_FEATURES,
    TARGETS,
    FeatureEncoder,
    FeatureError,
)
from predictors.modelfile import ModelFileError, load_model, read_header, save_model
from predictors.registry import MODEL_KINDS, make_model

__all__ = [
    "FEATURES", "FEATURE_SCHEMA_VERSION", "MODEL_KINDS", "NULLABLE_FEATURES", "NUMERIC_FEATURES",
    "TARGETS", "FeatureEncoder", "FeatureError", "ModelFileError", "Predictor", "load_model",
    "make_model", "read_header", "save_model",
]
