"""The ``[workload]`` and ``[arrivals]`` tables as typed, validated specs.

``build_trace`` takes plain mappings (exactly a scenario's tables) so that the
simulator, live mode and the CLI share one set of names and defaults. Bad input
fails here, before any dataset is read, naming the key and what is allowed.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

SOURCES = ("sharegpt", "wildchat", "azure", "synthetic")
ORDERS = ("interleave", "shuffle", "sequential")
PATTERNS = ("poisson", "gamma", "constant", "burst", "replay")
DISTS = ("fixed", "uniform", "lognormal")

WORKLOAD_DEFAULTS: dict[str, Any] = {
    "source": None,  # required
    "path": "",
    "dataset": "allenai/WildChat-1M",
    "split": "train",
    "tokenizer": "deepseek",
    "block_size": 16,
    "languages": [],
    "exclude_toxic": True,
    "exclude_redacted": False,
    "max_turns": 0,
    "min_input_len": 1,
    "max_input_len": 0,
    "min_output_len": 1,
    "max_output_len": 0,
    "max_conversations": 0,
    "order": "interleave",
    "active_sessions": 32,
    "synthetic": {},
}

# vllm bench serve's random dataset defaults: 1024 prompt tokens, 128 output tokens.
SYNTHETIC_DEFAULTS: dict[str, Any] = {
    "input": {"dist": "fixed", "value": 1024},
    "output": {"dist": "fixed", "value": 128},
    "prefix_groups": 0,
    "prefix_len": 0,
    "num_requests": 10000,
}

ARRIVAL_DEFAULTS: dict[str, Any] = {
    "pattern": "poisson",
    "rate": 1.0,
    "burstiness": 1.0,
    "base_rate": 1.0,
    "peak_rate": 10.0,
    "on_s": 10.0,
    "off_s": 30.0,
    "time_scale": 1.0,
    "target_rate": 0.0,
}

_DIST_KEYS = {
    "fixed": ("dist", "value"),
    "uniform": ("dist", "min", "max"),
    "lognormal": ("dist", "mean", "sigma", "min", "max"),
}


def _check_keys(table: Mapping[str, Any], allowed, where: str) -> None:
    if not isinstance(table, Mapping):
        raise ValueError(f"{where} must be a table (mapping), got {type(table).__name__}")
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown key(s) in {where}: {', '.join(map(repr, unknown))}; "
            f"allowed keys: {', '.join(sorted(allowed))}"
        )


def _int(value: Any, key: str, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{key} must be an integer >= {minimum}, got {value}")
    return int(value)


def _float(value: Any, key: str, *, positive: bool = False, allow_inf: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key} must be a number, got {value!r}")
    value = float(value)
    bound = "> 0" if positive else ">= 0"
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise ValueError(f"{key} must be a finite number {bound}, got {value}")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{key} must be a number {bound}, got {value}")
    return value


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, got {value!r}")
    return value


def _str(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string, got {value!r}")
    return value


def _choice(value: Any, key: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{key} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


@dataclass(frozen=True)
class LengthDist:
    """A token-length distribution: fixed, uniform [min, max] or lognormal with a given mean."""

    dist: str = "fixed"
    value: int = 0
    min: int = 1
    max: int = 0  # 0 = no upper bound (lognormal only)
    mean: float = 0.0
    sigma: float = 0.0

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any], where: str) -> LengthDist:
        if not isinstance(table, Mapping):
            raise ValueError(f"{where} must be a table like {{dist = \"fixed\", value = 128}}")
        dist = _choice(table.get("dist"), f"{where}.dist", DISTS)
        _check_keys(table, _DIST_KEYS[dist], f"{where} (dist = {dist!r})")
        missing = [k for k in _DIST_KEYS[dist] if k not in table and k not in ("min", "max")]
        if dist == "uniform":
            missing += [k for k in ("min", "max") if k not in table]
        if missing:
            raise ValueError(f"{where} (dist = {dist!r}) is missing key(s): {', '.join(missing)}")
        if dist == "fixed":
            return cls(dist, value=_int(table["value"], f"{where}.value", minimum=1))
        if dist == "uniform":
            lo = _int(table["min"], f"{where}.min", minimum=1)
            hi = _int(table["max"], f"{where}.max", minimum=1)
            if hi < lo:
                raise ValueError(f"{where}.max ({hi}) must be >= {where}.min ({lo})")
            return cls(dist, min=lo, max=hi)
        lo = _int(table.get("min", 1), f"{where}.min", minimum=1)
        hi = _int(table.get("max", 0), f"{where}.max", minimum=0)
        if hi and hi < lo:
            raise ValueError(f"{where}.max ({hi}) must be 0 (none) or >= {where}.min ({lo})")
        return cls(
            dist,
            mean=_float(table["mean"], f"{where}.mean", positive=True),
            sigma=_float(table["sigma"], f"{where}.sigma"),
            min=lo,
            max=hi,
        )


@dataclass(frozen=True)
class SyntheticSpec:
    input: LengthDist = field(default_factory=lambda: LengthDist("fixed", value=1024))
    output: LengthDist = field(default_factory=lambda: LengthDist("fixed", value=128))
    prefix_groups: int = 0
    prefix_len: int = 0
    num_requests: int = 10000

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any]) -> SyntheticSpec:
        where = "[workload.synthetic]"
        _check_keys(table, SYNTHETIC_DEFAULTS, where)
        t = {**SYNTHETIC_DEFAULTS, **table}
        groups = _int(t["prefix_groups"], f"{where}.prefix_groups")
        plen = _int(t["prefix_len"], f"{where}.prefix_len")
        if (groups == 0) != (plen == 0):
            raise ValueError(
                f"{where}.prefix_groups and prefix_len must both be > 0 (shared prefixes) "
                f"or both 0 (none), got prefix_groups={groups}, prefix_len={plen}"
            )
        return cls(
            input=LengthDist.from_mapping(t["input"], f"{where}.input"),
            output=LengthDist.from_mapping(t["output"], f"{where}.output"),
            prefix_groups=groups,
            prefix_len=plen,
            num_requests=_int(t["num_requests"], f"{where}.num_requests", minimum=1),
        )


@dataclass(frozen=True)
class Filters:
    """Which conversations and turns become requests (part of the cache key)."""

    languages: tuple[str, ...] = ()
    exclude_toxic: bool = True
    exclude_redacted: bool = False
    max_turns: int = 0
    min_input_len: int = 1
    max_input_len: int = 0
    min_output_len: int = 1
    max_output_len: int = 0

    def keep_lengths(self, input_len: int, output_len: int) -> bool:
        return (
            input_len >= self.min_input_len
            and (self.max_input_len == 0 or input_len <= self.max_input_len)
            and output_len >= self.min_output_len
            and (self.max_output_len == 0 or output_len <= self.max_output_len)
        )


@dataclass(frozen=True)
class WorkloadSpec:
    source: str
    path: str = ""
    dataset: str = "allenai/WildChat-1M"
    split: str = "train"
    tokenizer: str = "deepseek"
    block_size: int = 16
    filters: Filters = field(default_factory=Filters)
    max_conversations: int = 0
    order: str = "interleave"
    active_sessions: int = 32
    synthetic: SyntheticSpec = field(default_factory=SyntheticSpec)

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any]) -> WorkloadSpec:
        where = "[workload]"
        _check_keys(table, WORKLOAD_DEFAULTS, where)
        if "source" not in table:
            raise ValueError(f"{where}.source is required; one of {', '.join(map(repr, SOURCES))}")
        t = {**WORKLOAD_DEFAULTS, **table}
        langs = t["languages"]
        if isinstance(langs, str) or not isinstance(langs, (list, tuple)) or not all(
            isinstance(x, str) for x in langs
        ):
            raise ValueError(f"{where}.languages must be a list of language names, got {langs!r}")
        filters = Filters(
            languages=tuple(langs),
            exclude_toxic=_bool(t["exclude_toxic"], f"{where}.exclude_toxic"),
            exclude_redacted=_bool(t["exclude_redacted"], f"{where}.exclude_redacted"),
            max_turns=_int(t["max_turns"], f"{where}.max_turns"),
            min_input_len=_int(t["min_input_len"], f"{where}.min_input_len"),
            max_input_len=_int(t["max_input_len"], f"{where}.max_input_len"),
            min_output_len=_int(t["min_output_len"], f"{where}.min_output_len"),
            max_output_len=_int(t["max_output_len"], f"{where}.max_output_len"),
        )
        for lo, hi in (("min_input_len", "max_input_len"), ("min_output_len", "max_output_len")):
            if getattr(filters, hi) and getattr(filters, hi) < getattr(filters, lo):
                raise ValueError(
                    f"{where}.{hi} ({getattr(filters, hi)}) must be 0 (none) or >= "
                    f"{where}.{lo} ({getattr(filters, lo)})"
                )
        return cls(
            source=_choice(t["source"], f"{where}.source", SOURCES),
            path=_str(t["path"], f"{where}.path"),
            dataset=_str(t["dataset"], f"{where}.dataset"),
            split=_str(t["split"], f"{where}.split"),
            tokenizer=_str(t["tokenizer"], f"{where}.tokenizer"),
            block_size=_int(t["block_size"], f"{where}.block_size", minimum=1),
            filters=filters,
            max_conversations=_int(t["max_conversations"], f"{where}.max_conversations"),
            order=_choice(t["order"], f"{where}.order", ORDERS),
            active_sessions=_int(t["active_sessions"], f"{where}.active_sessions", minimum=1),
            synthetic=SyntheticSpec.from_mapping(t["synthetic"]),
        )

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["filters"]["languages"] = list(self.filters.languages)
        return d


@dataclass(frozen=True)
class ArrivalSpec:
    pattern: str = "poisson"
    rate: float = 1.0
    burstiness: float = 1.0
    base_rate: float = 1.0
    peak_rate: float = 10.0
    on_s: float = 10.0
    off_s: float = 30.0
    time_scale: float = 1.0
    target_rate: float = 0.0

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any]) -> ArrivalSpec:
        where = "[arrivals]"
        _check_keys(table, ARRIVAL_DEFAULTS, where)
        t = {**ARRIVAL_DEFAULTS, **table}
        spec = cls(
            pattern=_choice(t["pattern"], f"{where}.pattern", PATTERNS),
            rate=_float(t["rate"], f"{where}.rate", positive=True),
            burstiness=_float(t["burstiness"], f"{where}.burstiness", positive=True, allow_inf=True),
            base_rate=_float(t["base_rate"], f"{where}.base_rate"),
            peak_rate=_float(t["peak_rate"], f"{where}.peak_rate", positive=True),
            on_s=_float(t["on_s"], f"{where}.on_s", positive=True),
            off_s=_float(t["off_s"], f"{where}.off_s"),
            time_scale=_float(t["time_scale"], f"{where}.time_scale", positive=True),
            target_rate=_float(t["target_rate"], f"{where}.target_rate"),
        )
        if spec.pattern == "replay" and spec.target_rate > 0 and spec.time_scale != 1.0:
            raise ValueError(
                f"{where}: set either time_scale ({spec.time_scale}) or target_rate "
                f"({spec.target_rate}) for pattern 'replay', not both"
            )
        return spec

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
