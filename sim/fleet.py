"""From a resolved scenario to the simulator's fleet: profiles, engine limits, backends.

A scenario names latency profiles and may override a profile's engine limits
(0 means "the profile's default"). Everything is checked here, before a sweep
starts, so a typo in a profile name fails at once with the shipped names listed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from sim.cluster import BackendConfig, ClusterConfig
from sim.engine import EngineConfig
from sim.latency import LatencyProfile, ProfileError, load_profile


class FleetError(ValueError):
    """A scenario's fleet cannot be simulated as written (names the key)."""


@dataclass(frozen=True)
class Backend:
    name: str
    group: str
    profile: str


def _profile(spec: str | dict, where: str, cache: dict[str, LatencyProfile]) -> LatencyProfile:
    # A derived profile is a table (``profile = { model = ..., gpu = ... }``): keyed by its JSON.
    key = spec if isinstance(spec, str) else json.dumps(spec, sort_keys=True)
    if key not in cache:
        try:
            cache[key] = load_profile(spec)
        except ProfileError as exc:
            raise FleetError(f"{where}: {exc}") from None
    return cache[key]


def cluster_config(scenario, *, profiles: dict[str, LatencyProfile] | None = None) -> ClusterConfig:
    """The ``ClusterConfig`` of a resolved scenario (every grid axis a scalar)."""
    cache = profiles if profiles is not None else {}
    block_size = scenario.workload.block_size
    backends: list[BackendConfig] = []
    for gi, group in enumerate(scenario.cluster.groups):
        where = f"cluster.groups[{gi}] ({group.name})"
        if isinstance(group.profile, list) or isinstance(group.count, list):
            raise FleetError(f"{where}: grid axes must be resolved (use scenarios.expand_grid)")
        prof = _profile(group.profile, f"{where}.profile", cache)
        d = prof.engine
        if group.block_size != block_size:
            raise FleetError(
                f"{where}.block_size = {group.block_size} differs from workload.block_size = "
                f"{block_size}: prompts are hashed per block, so they must match"
            )
        engine = EngineConfig(
            # The profile's KV capacity is kept in tokens when the block size differs.
            num_kv_blocks=group.num_kv_blocks or d.kv_blocks_at(group.block_size),
            block_size=group.block_size,
            max_num_seqs=group.max_num_seqs or d.max_num_seqs,
            max_num_batched_tokens=group.max_num_batched_tokens or d.max_num_batched_tokens,
            enable_prefix_caching=bool(group.enable_prefix_caching),
            async_scheduling=d.async_scheduling,
        )
        for i in range(group.count):
            backends.append(BackendConfig(f"{group.name}-{i}", group.name, prof, engine))
    router = scenario.router
    return ClusterConfig(
        backends=backends,
        scrape_interval_s=router.scrape_interval_s,
        network_delay_s=router.network_delay_s,
        timeout_s=router.timeout_s,
        mode=router.mode,
        drain_s=scenario.drain_s,
    )
