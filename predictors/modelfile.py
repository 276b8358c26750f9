"""Safe, inspectable model files: JSON, or safetensors with a JSON header.

Never pickle: a model file is data a user may download, and unpickling runs code.
Linear, tree and online models are one JSON document; neural nets keep their
weights in safetensors and the same JSON document in its ``__metadata__`` (key
``predictor``), so ``python -m predictors info`` shows any model without torch.

Every file records the format, the feature schema version, the model kind, the
target and quantile, the groups, the hyperparameters and the training
provenance. Loading a file of another schema version or of another kind than the
caller expects fails with a message that says what to do.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from predictors.base import Predictor
from predictors.features import FEATURE_SCHEMA_VERSION, FeatureEncoder

FORMAT = "vllm-routing-lab/predictor"
FORMAT_VERSION = 1
_META_KEY = "predictor"


class ModelFileError(ValueError):
    """A file is not a usable model file (wrong format, version or kind)."""


def save_model(model: Predictor, path: str | Path) -> Path:
    """Write ``model`` atomically; a path without a suffix gets the kind's suffix."""
    if model.encoder is None:
        raise ModelFileError(f"cannot save an unfitted {model.kind} model; fit it first")
    path = Path(path)
    if path.suffix == "":
        path = path.with_suffix(model.file_suffix)
    elif path.suffix != model.file_suffix:
        raise ModelFileError(
            f"{model.kind} models are saved as {model.file_suffix} files; "
            f"got {path.name!r} (use a {model.file_suffix} name or none)"
        )
    state, tensors = model._state()
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": model.kind,
        "feature_schema_version": FEATURE_SCHEMA_VERSION,
        "target": model.target,
        "quantile": model.quantile,
        "seed": model.seed,
        "groups": list(model.encoder.groups),
        "encoder": model.encoder.to_dict(),
        "params": model.get_params(),
        "provenance": model.provenance,
        "state": state,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if model.file_suffix == ".json":
        if tensors:
            raise ModelFileError(f"{model.kind} is a JSON model but produced arrays")
        tmp.write_text(json.dumps(header, indent=1, default=_json_default, allow_nan=True))
    else:
        from safetensors.numpy import save_file

        meta = {_META_KEY: json.dumps(header, default=_json_default, allow_nan=True)}
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def read_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of a model file (no arrays, no torch), checked for format."""
    header, _ = _read(Path(path), with_tensors=False)
    return header


def load_model(path: str | Path, *, kind: str | None = None) -> Predictor:
    """Load a model file; ``kind`` makes a file of another kind fail clearly."""
    from predictors.registry import model_class

    path = Path(path)
    header, tensors = _read(path, with_tensors=True)
    if kind is not None and header["kind"] != kind:
        raise ModelFileError(f"{path} holds a {header['kind']!r} model, expected a {kind!r} model")
    try:
        cls = model_class(header["kind"])
    except ValueError as exc:
        raise ModelFileError(f"{path}: {exc}") from None
    params = header.get("params", {})
    unknown = sorted(set(params) - set(cls.param_names()))
    if unknown:
        raise ModelFileError(
            f"{path} has parameter(s) {', '.join(unknown)} unknown to {header['kind']!r} models"
        )
    model = cls(target=header["target"], quantile=header["quantile"], seed=header.get("seed", 0), **params)
    model.encoder = FeatureEncoder.from_dict(header["encoder"])
    model.provenance = dict(header.get("provenance", {}))
    model._load_state(header.get("state", {}), tensors)
    return model


def _read(path: Path, *, with_tensors: bool) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    with path.open("rb") as f:
        head = f.read(9)
    tensors: dict[str, np.ndarray] = {}
    if head.lstrip()[:1] == b"{":
        try:
            header = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelFileError(f"{path} is not a valid JSON model file: {exc}") from None
    elif len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < 100_000_000:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
                if with_tensors:
                    tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError) as exc:
            raise ModelFileError(f"{path} is not a readable safetensors file: {exc}") from None
        if _META_KEY not in meta:
            raise ModelFileError(
                f"{path} is a safetensors file without a predictor header; "
                "it was not written by `python -m predictors train`"
            )
        header = json.loads(meta[_META_KEY])
    else:
        raise ModelFileError(
            f"{path} is not a predictor model file (expected JSON or safetensors; "
            "pickle and joblib files are never loaded)"
        )
    _check_header(header, path)
    return header, tensors


def _check_header(header: Any, path: Path) -> None:
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a predictor model file (no {FORMAT!r} format tag)")
    if header.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            f"{path} has model file format version {header.get('format_version')}, this "
            f"version reads {FORMAT_VERSION}; retrain it with `python -m predictors train`"
        )
    version = header.get("feature_schema_version")
    if version != FEATURE_SCHEMA_VERSION:
        raise ModelFileError(
            f"{path} was trained on feature schema version {version}; this version uses "
            f"{FEATURE_SCHEMA_VERSION}. Its features would be misread: rebuild the training "
            "data and retrain with `python -m predictors train`"
        )
    missing = [k for k in ("kind", "target", "quantile", "encoder") if k not in header]
    if missing:
        raise ModelFileError(f"{path} lacks header field(s) {', '.join(missing)}")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
