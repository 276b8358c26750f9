"""The scenario schema: frozen dataclasses, one per TOML table.

The dataclass defaults *are* the documented defaults: the validator reads them
from here, so a default is written once. ``WorkloadSpec`` and ``ArrivalSpec``
are handed to ``workload.build_trace`` as ``dataclasses.asdict(spec)``, so their
field names are the keys the workload package expects.

A freshly loaded scenario may hold grid axes: a list where a scalar is expected,
on one of the keys in ``AXES`` (e.g. ``arrivals.rate = [2.0, 4.0]``). The
simulator never reads such a scenario directly; ``scenarios.expand_grid`` turns
it into ``GridPoint``s whose scenarios hold scalars only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SOURCES = ("sharegpt", "wildchat", "azure", "synthetic")
#: Sources whose requests carry real timestamps, which ``pattern = "replay"`` needs.
REPLAY_SOURCES = ("azure", "wildchat")
ORDERS = ("interleave", "shuffle", "sequential")
PATTERNS = ("poisson", "gamma", "constant", "burst", "replay")
MODES = ("fast", "exact")
DISTRIBUTIONS = ("fixed", "uniform", "lognormal")

#: Keys that may hold a list of values, each list a grid axis. ``<group>`` is a
#: ``[[cluster.groups]]`` name. Strategies and seeds are not axes: every grid
#: point runs every strategy with every seed.
SECTION_AXES = {
    "workload": ("max_input_len", "max_output_len"),
    "arrivals": ("pattern", "rate", "burstiness", "peak_rate", "time_scale", "target_rate"),
    "router": ("scrape_interval_s",),
}
GROUP_AXES = (
    "count", "profile", "max_num_seqs", "max_num_batched_tokens", "num_kv_blocks",
    "enable_prefix_caching",
)
AXES = tuple(
    [f"{section}.{key}" for section, keys in SECTION_AXES.items() for key in keys]
    + [f"cluster.groups.<group>.{key}" for key in GROUP_AXES]
)


def _fixed(value: int) -> dict[str, Any]:
    return {"dist": "fixed", "value": value}


@dataclass(frozen=True)
class SyntheticSpec:
    """``[workload.synthetic]``: generated requests (``source = "synthetic"``).

    ``input``/``output`` are distribution tables, kept as the plain dicts the
    file gave (validated): ``{dist="fixed", value=N}``, ``{dist="uniform",
    min=a, max=b}`` or ``{dist="lognormal", mean=m, sigma=s, min=?, max=?}``.
    """

    input: dict[str, Any] = field(default_factory=lambda: _fixed(1024))
    output: dict[str, Any] = field(default_factory=lambda: _fixed(128))
    prefix_groups: int = 0
    prefix_len: int = 0
    num_requests: int = 10000


@dataclass(frozen=True)
class WorkloadSpec:
    """``[workload]``: where requests come from and which ones are kept."""

    source: str
    path: str = ""
    dataset: str = "allenai/WildChat-1M"
    split: str = "train"
    tokenizer: str = "deepseek"
    block_size: int = 16
    languages: list[str] = field(default_factory=list)
    exclude_toxic: bool = True
    exclude_redacted: bool = False
    max_turns: int = 0
    min_input_len: int = 1
    max_input_len: int | list[int] = 0
    min_output_len: int = 1
    max_output_len: int | list[int] = 0
    max_conversations: int = 0
    order: str = "interleave"
    active_sessions: int = 32
    synthetic: SyntheticSpec = field(default_factory=SyntheticSpec)


@dataclass(frozen=True)
class ArrivalSpec:
    """``[arrivals]``: when requests are sent (see ``workload`` arrival processes)."""

    pattern: str | list[str] = "poisson"
    rate: float | list[float] = 1.0
    burstiness: float | list[float] = 1.0
    base_rate: float = 1.0
    peak_rate: float | list[float] = 10.0
    on_s: float = 10.0
    off_s: float = 30.0
    time_scale: float | list[float] = 1.0
    target_rate: float | list[float] = 0.0


@dataclass(frozen=True)
class GroupSpec:
    """One ``[[cluster.groups]]`` entry: ``count`` identical backends.

    Engine limits at 0 take the latency profile's defaults (the simulator knows
    the profiles; this package does not).
    """

    name: str
    profile: str | list[str]
    count: int | list[int] = 1
    max_num_seqs: int | list[int] = 0
    max_num_batched_tokens: int | list[int] = 0
    num_kv_blocks: int | list[int] = 0
    block_size: int = 16
    enable_prefix_caching: bool | list[bool] = True


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

    strategies: list[StrategySpec]
    scrape_interval_s: float | list[float] = 0.5
    network_delay_s: float = 0.0
    timeout_s: float = 0.0
    mode: str = "fast"


@dataclass(frozen=True)
class SloSpec:
    """``[slo]``: per-request latency objectives for goodput; ``None`` = not counted."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2el_ms: float | None = None


@dataclass(frozen=True)
class Scenario:
    """A whole scenario file, validated. See the module docstring about grid axes.

    At least one of ``num_requests`` and ``duration_s`` is set; when both are,
    ``workload.build_trace`` sends ``num_requests`` requests.
    """

    name: str
    workload: WorkloadSpec
    arrivals: ArrivalSpec
    cluster: ClusterSpec
    router: RouterSpec
    slo: SloSpec = field(default_factory=SloSpec)
    description: str = ""
    seeds: list[int] = field(default_factory=lambda: [0])
    duration_s: float | None = None
    num_requests: int | None = None
    #: Simulated seconds allowed after the last arrival for requests in flight;
    #: whatever is still running then is recorded as ``unfinished``.
    drain_s: float = 600.0
    source_text: str = field(default="", repr=False, compare=False)
    source_path: Path | None = field(default=None, compare=False)

    def axes(self) -> dict[str, list[Any]]:
        """Every grid axis of this scenario with its values, in expansion order.

        Empty for a resolved scenario (the scenario of a ``GridPoint``).
        """
        out: dict[str, list[Any]] = {}
        for section in ("workload", "arrivals"):
            spec = getattr(self, section)
            for key in SECTION_AXES[section]:
                if isinstance(getattr(spec, key), list):
                    out[f"{section}.{key}"] = list(getattr(spec, key))
        for group in self.cluster.groups:
            for key in GROUP_AXES:
                if isinstance(getattr(group, key), list):
                    out[f"cluster.groups.{group.name}.{key}"] = list(getattr(group, key))
        for key in SECTION_AXES["router"]:
            if isinstance(getattr(self.router, key), list):
                out[f"router.{key}"] = list(getattr(self.router, key))
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
