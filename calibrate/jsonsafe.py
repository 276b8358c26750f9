"""JSON-safe values for reports: NaN/inf become null, numpy scalars plain numbers."""
from __future__ import annotations

import math

import numpy as np


def json_safe(obj):
    """A copy of ``obj`` that ``json.dumps`` writes as standard JSON.

    Dict keys starting with ``_`` are dropped (private attachments such as frames).
    """
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
