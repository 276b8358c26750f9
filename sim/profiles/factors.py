"""Efficiency factors: how much of a device's datasheet peak a serving stack achieves.

The arithmetic (``sim.profiles.arithmetic``) says how many FLOPs and bytes a
step moves; the datasheet (``sim.profiles.hardware``) says how fast the device
could go. These few numbers close the gap, and are the only fitted part of a
derived profile:

- ``hbm_efficiency``: fraction of peak memory bandwidth streaming weights and KV
  reach. Held fixed when fitting (0.9 by default): with one tensor-parallel size
  in the data it cannot be told apart from the per-layer overhead.
- ``matmul_efficiency``, ``attention_efficiency``: fraction of dense peak FLOP/s
  the linear layers and prefill attention reach.
- ``interconnect_efficiency``: fraction of the link bandwidth a ring all-reduce reaches.
- ``layer_cycles``: fixed GPU cycles per layer per step (the many small kernels of
  a layer: norms, rotary, activation; launch and tail latency). Counted in
  cycles so it scales with the device's clock.
- ``allreduce_step_cycles``: cycles per step of a ring all-reduce (its latency part).
- ``seq_overhead_s``: host time per scheduled sequence (input preparation, sampling).
- ``prefill_floor_layer_s``: the least time per layer of a step that computes a
  prompt chunk (host-side launch bound when a prefill runs without CUDA graphs).
- ``step_overhead_s``: fixed host time per step (scheduler, bookkeeping).
- ``allreduce_spill_cost``: extra time per all-reduced byte of the tokens a step
  has beyond what the L2 cache holds (the reduced tensor and the residual stream,
  ``2 x hidden`` activations per token), in multiples of that byte's time at the
  achieved HBM bandwidth. 0 turns the term off (factor sets fitted before it).

A factor set is stored as JSON with where it was fitted and how well
(``sim/profiles/factor_sets/*.json``); ``python -m sim.profiles fit-factors`` writes one.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from sim.profiles.errors import DeriveError

FACTOR_SCHEMA_VERSION = 1
DEFAULT_SET = "gpu-splitwise"


@dataclass(frozen=True)
class EfficiencyFactors:
    hbm_efficiency: float = 0.9
    matmul_efficiency: float = 0.5
    attention_efficiency: float = 0.3
    interconnect_efficiency: float = 0.5
    layer_cycles: float = 0.0
    allreduce_step_cycles: float = 0.0
    seq_overhead_s: float = 0.0
    prefill_floor_layer_s: float = 0.0
    step_overhead_s: float = 0.0
    allreduce_spill_cost: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not (isinstance(v, (int, float)) and v >= 0 and v == v and v != float("inf")):
                raise DeriveError(f"efficiency factor {f.name} must be a finite number >= 0, got {v!r}")
        for name in ("hbm_efficiency", "matmul_efficiency", "attention_efficiency", "interconnect_efficiency"):
            if not 0 < getattr(self, name) <= 1.5:
                raise DeriveError(f"efficiency factor {name} must be in (0, 1.5], got {getattr(self, name)}")

    def with_values(self, **values: float) -> EfficiencyFactors:
        unknown = set(values) - set(FACTOR_NAMES)
        if unknown:
            raise DeriveError(f"unknown efficiency factor(s) {sorted(unknown)}; allowed: {', '.join(FACTOR_NAMES)}")
        return replace(self, **values)


FACTOR_NAMES = tuple(f.name for f in fields(EfficiencyFactors))


@dataclass(frozen=True)
class FactorSet:
    """Named factors with their provenance (what they were fitted on, how well)."""

    name: str
    factors: EfficiencyFactors
    description: str = ""
    source: dict[str, Any] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"schema_version": FACTOR_SCHEMA_VERSION, "name": self.name,
                           "description": self.description, "factors": asdict(self.factors),
                           "source": self.source, "fit": self.fit}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, origin: str) -> FactorSet:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DeriveError(f"{origin}: not valid JSON ({exc})") from None
        if not isinstance(doc, dict) or doc.get("schema_version") != FACTOR_SCHEMA_VERSION:
            raise DeriveError(f"{origin}: not an efficiency-factor file of schema version {FACTOR_SCHEMA_VERSION}")
        values = doc.get("factors")
        if not isinstance(values, dict):
            raise DeriveError(f"{origin}: lacks a 'factors' object")
        return cls(name=str(doc.get("name", Path(origin).stem)), factors=EfficiencyFactors().with_values(**values),
                   description=str(doc.get("description", "")), source=doc.get("source", {}), fit=doc.get("fit", {}))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json())
        return path


def shipped_factor_sets() -> list[str]:
    folder = resources.files("sim.profiles.factor_sets")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def load_factor_set(name_or_path: str | Path | None = None) -> FactorSet:
    """A shipped factor set by name (default ``gpu-splitwise``), or a factor JSON file by path."""
    text = str(name_or_path or DEFAULT_SET)
    if text.endswith(".json") or "/" in text:
        path = Path(text)
        if not path.is_file():
            raise DeriveError(f"efficiency-factor file {path} does not exist")
        return FactorSet.from_json(path.read_text(), str(path))
    resource = resources.files("sim.profiles.factor_sets") / f"{text}.json"
    if not resource.is_file():
        raise DeriveError(f"unknown efficiency-factor set {text!r}; shipped: {', '.join(shipped_factor_sets())} "
                          "(or give a path to a factor .json)")
    return FactorSet.from_json(resource.read_text(), f"factor set {text}")
