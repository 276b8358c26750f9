"""The scenario schema and the workload package state the same defaults.

The import rules keep ``workload`` from importing ``scenarios``, so the defaults
of ``[workload]`` and ``[arrivals]`` are written in both; this keeps them equal.
"""
from __future__ import annotations

from dataclasses import asdict

from scenarios.schema import ArrivalSpec, WorkloadSpec
from workload.config import ARRIVAL_DEFAULTS, WORKLOAD_DEFAULTS


def test_workload_defaults_agree():
    spec = asdict(WorkloadSpec(source="sharegpt"))
    assert set(spec) == set(WORKLOAD_DEFAULTS)
    for key, value in WORKLOAD_DEFAULTS.items():
        if key in ("source", "synthetic"):
            continue  # required / a nested table validated on its own
        assert spec[key] == value, key


def test_arrival_defaults_agree():
    assert asdict(ArrivalSpec()) == ARRIVAL_DEFAULTS
