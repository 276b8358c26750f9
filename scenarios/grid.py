"""Grid expansion: a scenario with list-valued axes -> one resolved scenario per point.

Points are the cartesian product of the axes, in the order ``Scenario.axes()``
gives them (workload, arrivals, cluster groups in file order, router), the last
axis varying fastest, values in the order the file lists them. Every grid point
runs every strategy with every seed; those are not axes.

A point's id must be stable (the same axis values give the same id on any
machine, in any run, so ``--resume`` and comparisons across runs line up),
file-system safe (it names a ``records/point=<id>`` folder) and readable. It is
a readable part built from the axis values plus eight hex digits of a hash of
the exact values, e.g. ``peak_rate_30+h100.count_8-1a2b3c4d``; a scenario
without axes has the single point ``default``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from typing import Any

from scenarios.schema import Scenario

#: The id of the only point of a scenario without grid axes.
SINGLE_POINT_ID = "default"
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")
_MAX_READABLE = 80


@dataclass(frozen=True)
class GridPoint:
    """One point of a scenario's grid: ``scenario`` holds scalars only."""

    point_id: str
    axes: dict[str, Any]
    scenario: Scenario

    @property
    def label(self) -> str:
        """The axes in words, e.g. ``rate=4, h100.count=8``."""
        if not self.axes:
            return "single point"
        return ", ".join(f"{short_axis(k)}={_show(v)}" for k, v in self.axes.items())

    def describe(self) -> dict[str, Any]:
        """This point as a run manifest lists it: id, label, axes and backends."""
        return {
            "point_id": self.point_id,
            "label": self.label,
            "axes": dict(self.axes),
            "backends": [
                {"name": name, "group": group.name, "profile": group.profile}
                for name, group in self.scenario.backends()
            ],
        }


def expand_grid(scenario: Scenario) -> list[GridPoint]:
    """Every grid point of ``scenario``, in a deterministic order."""
    axes = scenario.axes()
    if not axes:
        return [GridPoint(SINGLE_POINT_ID, {}, scenario)]
    names = list(axes)
    points = []
    for values in itertools.product(*(axes[n] for n in names)):
        chosen = dict(zip(names, values))
        points.append(GridPoint(point_id(chosen), chosen, resolve(scenario, chosen)))
    ids = [p.point_id for p in points]
    if len(set(ids)) != len(ids):  # pragma: no cover - needs a 32-bit hash collision
        raise RuntimeError("two grid points got the same id; please report this scenario")
    return points


def resolve(scenario: Scenario, values: dict[str, Any]) -> Scenario:
    """``scenario`` with each axis path in ``values`` set to that scalar."""
    workload, arrivals, router = {}, {}, {}
    groups: dict[str, dict[str, Any]] = {}
    for path, value in values.items():
        parts = path.split(".")
        if parts[0] == "cluster":
            groups.setdefault(parts[2], {})[parts[3]] = value
        else:
            {"workload": workload, "arrivals": arrivals, "router": router}[parts[0]][parts[1]] = value
    cluster = dataclasses.replace(
        scenario.cluster,
        groups=[dataclasses.replace(g, **groups.get(g.name, {})) for g in scenario.cluster.groups],
    )
    return dataclasses.replace(
        scenario,
        workload=dataclasses.replace(scenario.workload, **workload),
        arrivals=dataclasses.replace(scenario.arrivals, **arrivals),
        router=dataclasses.replace(scenario.router, **router),
        cluster=cluster,
    )


def point_id(axes: dict[str, Any]) -> str:
    """The stable, file-system safe id of the point with these axis values."""
    if not axes:
        return SINGLE_POINT_ID
    canonical = json.dumps(sorted(axes.items()), separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:8]
    readable = "+".join(f"{short_axis(k)}_{_show(v)}" for k, v in axes.items())
    readable = _UNSAFE.sub("_", readable)[:_MAX_READABLE]
    return f"{readable}-{digest}"


def short_axis(path: str) -> str:
    """``arrivals.rate`` -> ``rate``; ``cluster.groups.h100.count`` -> ``h100.count``."""
    parts = path.split(".")
    return ".".join(parts[2:]) if parts[0] == "cluster" else parts[-1]


def _show(value: Any) -> str:
    if isinstance(value, dict):  # a derived profile: model@gpu, tensor parallelism, dtype
        return "@".join(str(value.get(k, "")) for k in ("model", "gpu")) + f"-tp{value.get('tp', 1)}" + (
            f"-{value['dtype']}" if "dtype" in value else "")
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
