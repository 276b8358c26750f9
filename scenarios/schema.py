"""The scenario schema: frozen dataclasses, one per TOML table.

``[workload]`` and ``[arrivals]`` are ``workload``'s own tables
(``workload.config.WorkloadSpec`` / ``ArrivalSpec``): one schema, so a scenario
accepts exactly the tables ``workload.build_trace`` accepts, and
``dataclasses.asdict(spec)`` is what ``build_trace`` takes. The tables defined
here declare their keys the same way (``workload.tables.key``: default and rule
in one place), so adding a key to any table is one line.

A freshly loaded scenario may hold grid axes: a list where a scalar is expected,
on one of the keys in ``AXES`` (e.g. ``arrivals.rate = [2.0, 4.0]``). The
simulator never reads such a scenario directly; ``scenarios.expand_grid`` turns
it into ``GridPoint``s whose scenarios hold scalars only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workload.config import (
    ORDERS, PATTERNS, REPLAY_SOURCES, SOURCES, ArrivalSpec, SyntheticSpec, WorkloadSpec,
)
from workload.tables import REQUIRED, axes, key

MODES = ("fast", "exact")
DISTRIBUTIONS = ("fixed", "uniform", "lognormal")


#: Keys of a derived-profile table (``sim.profiles.profile_from_spec`` reads them) and
#: their types: model and gpu are required.
DERIVED_PROFILE_KEYS = {
    "model": str, "gpu": str, "tp": int, "dtype": str, "factors": str, "gpu_memory_utilization": float,
    "max_num_seqs": int, "max_num_batched_tokens": int, "block_size": int,
}


@dataclass(frozen=True)
class GroupSpec:
    """One ``[[cluster.groups]]`` entry: ``count`` identical backends.

    Engine limits at 0 take the latency profile's defaults (the simulator knows
    the profiles; this package does not). ``profile`` is a profile name, a
    profile JSON path, or a derived-profile table ``{ model = ..., gpu = ...,
    tp = ..., dtype = ... }`` (keys ``DERIVED_PROFILE_KEYS``; the simulator
    checks the names, ``scenarios.validate`` the shape).
    """

    name: str = key(REQUIRED, "str", nonempty=True)
    profile: str | dict[str, Any] | list = key(REQUIRED, "str", nonempty=True, axis=True)
    count: int | list[int] = key(1, ge=1, axis=True)
    max_num_seqs: int | list[int] = key(0, ge=0, axis=True)
    max_num_batched_tokens: int | list[int] = key(0, ge=0, axis=True)
    num_kv_blocks: int | list[int] = key(0, ge=0, axis=True)
    block_size: int = key(16, ge=1)
    enable_prefix_caching: bool | list[bool] = key(True, axis=True)


@dataclass(frozen=True)
class ClusterSpec:
    """``[cluster]``: the fleet, as groups of identical backends."""

    groups: list[GroupSpec]


@dataclass(frozen=True)
class StrategySpec:
    """One routing strategy to compare: registry ``name``, unique ``label``, parameters."""

    name: str
    label: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RouterSpec:
    """``[router]``: the strategies to compare and what the router can observe."""

    strategies: list[StrategySpec] = key(REQUIRED, "table")  # checked by scenarios.validate
    scrape_interval_s: float | list[float] = key(0.5, gt=0, axis=True)
    network_delay_s: float = key(0.0, ge=0)
    timeout_s: float = key(0.0, ge=0)
    mode: str = key("fast", choices=MODES)


@dataclass(frozen=True)
class SloSpec:
    """``[slo]``: per-request latency objectives for goodput; ``None`` = not counted."""

    ttft_ms: float | None = key(None, "float", gt=0)
    tpot_ms: float | None = key(None, "float", gt=0)
    e2el_ms: float | None = key(None, "float", gt=0)


@dataclass(frozen=True)
class Scenario:
    """A whole scenario file, validated. See the module docstring about grid axes.

    At least one of ``num_requests`` and ``duration_s`` is set; when both are,
    ``workload.build_trace`` sends ``num_requests`` requests.
    """

    name: str = key(REQUIRED, "str", nonempty=True)
    workload: WorkloadSpec = key(REQUIRED, "table")
    arrivals: ArrivalSpec = key(REQUIRED, "table")
    cluster: ClusterSpec = key(REQUIRED, "table")
    router: RouterSpec = key(REQUIRED, "table")
    slo: SloSpec = key(kind="table", factory=SloSpec)
    description: str = key("", "str")
    seeds: list[int] = key(kind="int_list", factory=lambda: [0])
    duration_s: float | None = key(None, "float", gt=0)
    num_requests: int | None = key(None, "int", ge=1)
    #: Simulated seconds allowed after the last arrival for requests in flight;
    #: whatever is still running then is recorded as ``unfinished``.
    drain_s: float = key(600.0, ge=0)
    source_text: str = field(default="", repr=False, compare=False)
    source_path: Path | None = field(default=None, compare=False)

    def axes(self) -> dict[str, list[Any]]:
        """Every grid axis of this scenario with its values, in expansion order.

        Empty for a resolved scenario (the scenario of a ``GridPoint``).
        """
        out: dict[str, list[Any]] = {}
        for section in ("workload", "arrivals"):
            spec = getattr(self, section)
            for name in SECTION_AXES[section]:
                if isinstance(getattr(spec, name), list):
                    out[f"{section}.{name}"] = list(getattr(spec, name))
        for group in self.cluster.groups:
            for name in GROUP_AXES:
                if isinstance(getattr(group, name), list):
                    out[f"cluster.groups.{group.name}.{name}"] = list(getattr(group, name))
        for name in SECTION_AXES["router"]:
            if isinstance(getattr(self.router, name), list):
                out[f"router.{name}"] = list(getattr(self.router, name))
        return out

    @property
    def is_resolved(self) -> bool:
        """True when no key holds a list of grid values."""
        return not self.axes()

    def backends(self) -> list[tuple[str, GroupSpec]]:
        """``(backend name, its group)`` in fleet order; names are ``<group>-<i>``."""
        self._require_resolved("backends()")
        return [
            (f"{g.name}-{i}", g) for g in self.cluster.groups for i in range(g.count)  # type: ignore[arg-type]
        ]

    def backend_names(self) -> list[tuple[str, str]]:
        """``(backend name, group name)`` pairs, e.g. ``("h100-0", "h100")``."""
        return [(name, group.name) for name, group in self.backends()]

    def _require_resolved(self, what: str) -> None:
        if not self.is_resolved:
            axes = ", ".join(self.axes())
            raise ValueError(
                f"scenario {self.name!r} still has grid axes ({axes}); call "
                f"scenarios.expand_grid() and use each GridPoint.scenario for {what}"
            )


#: Keys that may hold a list of values, each list a grid axis (the fields marked
#: ``axis``). ``<group>`` is a ``[[cluster.groups]]`` name. Strategies and seeds
#: are not axes: every grid point runs every strategy with every seed.
SECTION_AXES = {
    "workload": axes(WorkloadSpec),
    "arrivals": axes(ArrivalSpec),
    "router": axes(RouterSpec),
}
GROUP_AXES = axes(GroupSpec)
AXES = tuple(
    [f"{section}.{name}" for section, names in SECTION_AXES.items() for name in names]
    + [f"cluster.groups.<group>.{name}" for name in GROUP_AXES]
)

__all__ = [
    "AXES", "DISTRIBUTIONS", "GROUP_AXES", "MODES", "ORDERS", "PATTERNS", "REPLAY_SOURCES",
    "SECTION_AXES", "SOURCES", "ArrivalSpec", "ClusterSpec", "GroupSpec", "RouterSpec", "Scenario",
    "SloSpec", "StrategySpec", "SyntheticSpec", "WorkloadSpec",
]
