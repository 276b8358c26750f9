"""The one JSON sanitiser: values any report writes become strict, standard JSON.

NaN and infinities become ``null`` (``json`` would write ``NaN``, which other
tools reject), numpy scalars and arrays plain numbers and lists, tuples and sets
lists, paths strings. Manifests, summaries, validation documents and
calibration reports all go through it.
"""
from __future__ import annotations

import json
import math
from pathlib import PurePath
from typing import Any

import numpy as np


def json_safe(obj: Any, *, drop_private: bool = False) -> Any:
    """A copy of ``obj`` that ``json.dumps(..., allow_nan=False)`` accepts.

    ``drop_private`` leaves out dict keys starting with ``_`` (attachments such as
    data frames that a report carries for its own use).
    """
    if isinstance(obj, dict):
        return {k if isinstance(k, str) else str(k): json_safe(v, drop_private=drop_private)
                for k, v in obj.items() if not (drop_private and str(k).startswith("_"))}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
        return [json_safe(v, drop_private=drop_private) for v in items]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist(), drop_private=drop_private)
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, PurePath):
        return str(obj)
    if obj is None or isinstance(obj, str):
        return obj
    raise TypeError(f"not JSON serialisable: {type(obj).__name__} {obj!r:.60}")


def dumps(obj: Any, *, indent: int | None = 2, drop_private: bool = False) -> str:
    """``obj`` as strict JSON text (see ``json_safe``)."""
    return json.dumps(json_safe(obj, drop_private=drop_private), indent=indent, allow_nan=False)


__all__ = ["dumps", "json_safe"]
