"""The ``[workload]`` and ``[arrivals]`` tables: the one schema, owned here.

Each table is a frozen dataclass whose fields are the table's keys, each
declared once with its default and rule (``workload.tables.key``); adding a key
is one line in one class. ``build_trace`` reads the tables through
``WorkloadSpec.from_mapping`` / ``ArrivalSpec.from_mapping``, and a scenario file
(``scenarios``) through the very same functions with ``grid=True`` (keys marked
``axis`` may then hold a list of values, and every rule that spans keys is
checked for each combination). So both entry points accept and reject the same
tables, with the same key paths in their errors, and ``dataclasses.asdict(spec)``
is again a table both accept.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np

from workload.tables import (
    REQUIRED, Rule, SchemaError, axes, check, defaults, join, key, read_table, reject_unknown,
    require_table, rules, values,
)
from workload.thinktime import ThinkDist, default_think, parse_think

SOURCES = ("sharegpt", "wildchat", "azure", "mooncake", "vllm_custom", "synthetic")
#: Sources whose requests carry real timestamps, which ``pattern = "replay"`` needs.
REPLAY_SOURCES = ("azure", "mooncake", "wildchat", "vllm_custom")
#: Sources that record think times (the time from a reply to the next user turn).
THINK_DATA_SOURCES = ("wildchat", "mooncake", "vllm_custom")
#: The source whose conversations carry language labels (``languages`` filters on them).
LANGUAGE_SOURCE = "wildchat"
ORDERS = ("interleave", "shuffle", "sequential")
PATTERNS = ("poisson", "gamma", "constant", "burst", "replay", "concurrency")
#: How the turns of a multi-turn session are sent (``workload.sessions``).
SESSION_MODES = ("closed", "open")
#: Where a ``replay`` starts in its trace: at the beginning for every seed, or at a
#: point each seed draws (so seeds replay different windows of one trace).
REPLAY_WINDOWS = ("start", "seeded")


# --- token-length distributions of synthetic requests ------------------------------------
@dataclass(frozen=True, kw_only=True)
class FixedLength:
    """``{dist = "fixed", value = N}``: every request has ``N`` tokens."""

    name: ClassVar[str] = "fixed"
    dist: str = key("fixed", "str")
    value: int = key(REQUIRED, "int", ge=1)

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.full(n, self.value, dtype=np.int64)


@dataclass(frozen=True, kw_only=True)
class UniformLength:
    """``{dist = "uniform", min = a, max = b}``: integers in ``[a, b]``."""

    name: ClassVar[str] = "uniform"
    dist: str = key("uniform", "str")
    min: int = key(REQUIRED, "int", ge=1)
    max: int = key(REQUIRED, "int", ge=1)

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(self.min, self.max + 1, size=n, dtype=np.int64)


@dataclass(frozen=True, kw_only=True)
class LognormalLength:
    """``{dist = "lognormal", mean = m, sigma = s, min = 1, max = 0}``: lognormal with mean ``m``.

    ``sigma = 0`` gives the mean every time; ``max = 0`` means no upper bound.
    """

    name: ClassVar[str] = "lognormal"
    dist: str = key("lognormal", "str")
    mean: float = key(REQUIRED, "float", gt=0)
    sigma: float = key(REQUIRED, "float", ge=0)
    min: int = key(1, "int", ge=1)
    max: int = key(0, "int", ge=0)

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        # parameterised by its mean: E[X] = exp(mu + sigma^2 / 2)
        mu = math.log(self.mean) - self.sigma**2 / 2
        x = np.rint(rng.lognormal(mu, self.sigma, size=n))
        return np.clip(x, self.min, self.max or np.inf).astype(np.int64)


LengthDist = FixedLength | UniformLength | LognormalLength
DISTRIBUTIONS: dict[str, type] = {c.name: c for c in (FixedLength, UniformLength, LognormalLength)}
_DIST_RULE = Rule("str", choices=tuple(DISTRIBUTIONS))


def parse_length(raw: Any, path: str) -> LengthDist:
    """A length distribution table (or one already parsed) -> its typed form."""
    if isinstance(raw, tuple(DISTRIBUTIONS.values())):
        raw = asdict(raw)
    table = require_table(raw, path)
    if "dist" not in table:
        raise SchemaError(join(path, "dist"), "missing required key; expected one of "
                          + ", ".join(map(repr, DISTRIBUTIONS)))
    name = check(_DIST_RULE, table["dist"], join(path, "dist"))
    cls = DISTRIBUTIONS[name]
    reject_unknown(table, list(rules(cls)), path)
    for field_name, rule in rules(cls).items():
        if field_name != "dist" and field_name not in table and defaults(cls)[field_name] is REQUIRED:
            raise SchemaError(join(path, field_name),
                              f"missing required key for dist = {name!r}; expected {rule.allowed()}")
    spec = cls(**read_table(table, cls, path))
    if name == "uniform" and spec.max < spec.min:
        raise SchemaError(join(path, "max"), f"{spec.max} is below min = {spec.min}; expected max >= min")
    if name == "lognormal" and spec.max and spec.max < spec.min:
        raise SchemaError(join(path, "max"), f"{spec.max} is below min = {spec.min}; expected 0 "
                                             f"(no bound) or max >= min")
    return spec


def _fixed(value: int):
    return lambda: FixedLength(value=value)


# --- [workload.synthetic] -----------------------------------------------------------------
@dataclass(frozen=True)
class SyntheticSpec:
    """``[workload.synthetic]``: generated requests (``source = "synthetic"``).

    Defaults are ``vllm bench serve``'s random dataset: 1024 prompt tokens, 128 output tokens.
    ``prefix_groups`` distinct system prompts of ``prefix_len`` tokens start the
    prompts; with ``turns`` above 1 each session is a multi-turn conversation on
    one of them (few agents, many users).
    """

    input: LengthDist = key(kind="table", factory=_fixed(1024))
    output: LengthDist = key(kind="table", factory=_fixed(128))
    prefix_groups: int = key(0, ge=0)
    prefix_len: int = key(0, ge=0)
    num_requests: int = key(10000, ge=1)
    #: Turns per session. Above 1, each session is a conversation: every turn
    #: re-sends the previous turns (prompts and replies) plus a new message of
    #: ``input`` tokens, so many sessions share each system prompt.
    turns: LengthDist = key(kind="table", factory=_fixed(1))

    @classmethod
    def from_mapping(cls, raw: Any, path: str = "workload.synthetic") -> SyntheticSpec:
        if isinstance(raw, SyntheticSpec):
            return raw
        t = read_table(raw, cls, path)
        t["input"] = parse_length(t["input"], join(path, "input"))
        t["output"] = parse_length(t["output"], join(path, "output"))
        t["turns"] = parse_length(t["turns"], join(path, "turns"))
        if t["prefix_groups"] and not t["prefix_len"]:
            raise SchemaError(join(path, "prefix_len"), "is 0 but prefix_groups > 0; expected the "
                                                        "shared prefix length in tokens (>= 1)")
        if t["prefix_len"] and not t["prefix_groups"]:
            raise SchemaError(join(path, "prefix_groups"), "is 0 but prefix_len > 0; expected how "
                                                           "many distinct shared prefixes (>= 1)")
        return cls(**t)


# --- [workload] -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Filters:
    """Which conversations and turns become requests (part of the pool cache key)."""

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

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "languages": list(self.languages)}


#: Pairs of keys whose upper bound (0: none) must not be below the lower one.
_LENGTH_BOUNDS = (("min_input_len", "max_input_len"), ("min_output_len", "max_output_len"))


@dataclass(frozen=True)
class WorkloadSpec:
    """``[workload]``: where requests come from and which ones are kept."""

    source: str = key(REQUIRED, "str", choices=SOURCES)
    path: str = key("", "str")
    dataset: str = key("allenai/WildChat-1M", nonempty=True)
    split: str = key("train", nonempty=True)
    tokenizer: str = key("deepseek", nonempty=True)
    block_size: int = key(16, ge=1)
    #: Tokens per hash id of a Mooncake-format trace (512 in Mooncake's own traces).
    hash_block_size: int = key(512, ge=1)
    languages: list[str] = key(kind="str_list", factory=list)
    exclude_toxic: bool = key(True)
    exclude_redacted: bool = key(False)
    max_turns: int = key(0, ge=0)
    min_input_len: int = key(1, ge=0)
    max_input_len: int = key(0, ge=0, axis=True)
    min_output_len: int = key(1, ge=0)
    max_output_len: int = key(0, ge=0, axis=True)
    max_conversations: int = key(0, ge=0)
    order: str = key("interleave", choices=ORDERS)
    active_sessions: int = key(32, ge=1)
    synthetic: SyntheticSpec = key(kind="table", factory=SyntheticSpec)

    @classmethod
    def from_mapping(cls, raw: Any, *, path: str = "workload", grid: bool = False,
                     lists_note: str = "") -> WorkloadSpec:
        """The checked table; ``SchemaError`` (a ``ValueError``) names a bad key.

        With ``grid``, keys marked ``axis`` may hold lists (a scenario's grid axes).
        """
        if isinstance(raw, WorkloadSpec):
            raw = asdict(raw)
        t = read_table(raw, cls, path, grid=grid, lists_note=lists_note)
        t["synthetic"] = SyntheticSpec.from_mapping(t["synthetic"], join(path, "synthetic"))
        for low, high in _LENGTH_BOUNDS:
            for lo, hi in itertools.product(values(t[low]), values(t[high])):
                if hi and hi < lo:
                    raise SchemaError(join(path, high), f"{hi} is below {low} = {lo}; expected 0 "
                                                        f"(no limit) or a value >= {lo}")
        if t["languages"] and t["source"] != LANGUAGE_SOURCE:
            raise SchemaError(join(path, "languages"),
                              f"{t['languages']} needs a source with language labels "
                              f"({LANGUAGE_SOURCE!r}); source {t['source']!r} has none (set languages = [])")
        return cls(**t)

    @property
    def filters(self) -> Filters:
        return Filters(tuple(self.languages), self.exclude_toxic, self.exclude_redacted,
                       self.max_turns, self.min_input_len, self.max_input_len,
                       self.min_output_len, self.max_output_len)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- [arrivals] -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ArrivalSpec:
    """``[arrivals]``: when requests are sent (``workload.arrivals``, ``workload.sessions``).

    ``rate`` (and ``base_rate``/``peak_rate``, ``target_rate``) is in requests per
    second in both session modes: with closed sessions, new sessions start at
    ``rate`` divided by the mean number of turns per session, so the long-run
    offered load is still ``rate`` requests per second.
    """

    pattern: str = key("poisson", choices=PATTERNS, axis=True)
    rate: float = key(1.0, gt=0, axis=True)
    #: Gamma shape parameter of the inter-arrival times: 1 is Poisson, below 1
    #: burstier, ``inf`` a constant rate (``vllm bench serve --burstiness``).
    burstiness: float = key(1.0, gt=0, allow_inf=True, axis=True)
    base_rate: float = key(1.0, ge=0)
    peak_rate: float = key(10.0, gt=0, axis=True)
    on_s: float = key(10.0, gt=0)
    off_s: float = key(30.0, ge=0)
    time_scale: float = key(1.0, gt=0, axis=True)
    target_rate: float = key(0.0, ge=0, axis=True)
    #: ``pattern = "replay"``: ``start`` replays the trace from its first request for
    #: every seed (seeds then differ only in the routers' random draws); ``seeded``
    #: starts each seed at its own request, drawn uniformly among those that leave room
    #: for the whole run, so seeds are independent windows of one trace.
    replay_window: str = key("start", choices=REPLAY_WINDOWS)
    #: ``pattern = "concurrency"``: this many closed-loop clients, each sending its
    #: next request when its last one has ended (``vllm bench serve
    #: --max-concurrency``, GuideLLM's concurrent profile). 0: not set.
    concurrency: int = key(0, ge=0, axis=True)
    #: ``closed``: a session's next turn leaves when its previous reply has ended
    #: plus a think time; ``open``: every turn leaves at its own arrival time.
    sessions: str = key("closed", choices=SESSION_MODES, axis=True)
    #: Think time between a reply and the next turn of its session (closed sessions).
    think_time: ThinkDist = key(kind="table", factory=default_think)

    @classmethod
    def from_mapping(cls, raw: Any, *, path: str = "arrivals", grid: bool = False,
                     lists_note: str = "") -> ArrivalSpec:
        """The checked table; ``SchemaError`` (a ``ValueError``) names a bad key."""
        if isinstance(raw, ArrivalSpec):
            raw = asdict(raw)
        t = read_table(raw if raw is not None else {}, cls, path, grid=grid, lists_note=lists_note)
        t["think_time"] = parse_think(t["think_time"], join(path, "think_time"))
        if "concurrency" in values(t["pattern"]) and 0 in values(t["concurrency"]):
            raise SchemaError(join(path, "concurrency"),
                              "pattern 'concurrency' needs the number of clients; expected an "
                              "integer >= 1 (or a list of them, a grid axis)")
        if ("replay" in values(t["pattern"]) and any(r > 0 for r in values(t["target_rate"]))
                and any(s != 1.0 for s in values(t["time_scale"]))):
            raise SchemaError(join(path, "target_rate"),
                              "replay speed is set twice: give time_scale (a speed-up factor) or "
                              "target_rate (a mean rate in req/s), not both; leave the other at its "
                              "default (1.0 / 0)")
        return cls(**t)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_pair(workload: WorkloadSpec, arrivals: ArrivalSpec, path: str = "arrivals") -> None:
    """Rules that span the two tables: ``replay`` needs a source with timestamps, and
    think times from the data a source that records them."""
    if arrivals.think_time.name == "data" and workload.source not in THINK_DATA_SOURCES:
        raise SchemaError(
            join(path, "think_time"),
            f"{{dist = \"data\"}} takes think times from the dataset, but workload.source = "
            f"{workload.source!r} records none; use a source that does "
            f"({', '.join(THINK_DATA_SOURCES)}) or a distribution, e.g. "
            f"{{ dist = \"lognormal\", mean = 211.5, sigma = 0.98 }}")
    if "replay" in values(arrivals.pattern) and workload.source not in REPLAY_SOURCES:
        raise SchemaError(
            join(path, "pattern"),
            f"'replay' replays the dataset's own timestamps, but workload.source = "
            f"{workload.source!r} has none; use a source with timestamps "
            f"({', '.join(REPLAY_SOURCES)}) or another pattern "
            f"({', '.join(p for p in PATTERNS if p != 'replay')})",
        )


def table_defaults(cls: type) -> dict[str, Any]:
    """The defaults of a table as plain values (``None`` for a required key)."""
    out = {}
    for name, value in defaults(cls).items():
        if dataclasses.is_dataclass(value):
            value = asdict(value)  # a nested table, as a scenario file writes it
        out[name] = None if value is REQUIRED else value
    return out


WORKLOAD_DEFAULTS = table_defaults(WorkloadSpec)
ARRIVAL_DEFAULTS = table_defaults(ArrivalSpec)
SYNTHETIC_DEFAULTS = table_defaults(SyntheticSpec)
#: Keys that a scenario may sweep (lists of values), per table.
WORKLOAD_AXES = axes(WorkloadSpec)
ARRIVAL_AXES = axes(ArrivalSpec)

__all__ = [
    "ARRIVAL_AXES", "ARRIVAL_DEFAULTS", "DISTRIBUTIONS", "ORDERS", "PATTERNS", "REPLAY_SOURCES",
    "SESSION_MODES", "SOURCES", "SYNTHETIC_DEFAULTS", "THINK_DATA_SOURCES", "WORKLOAD_AXES",
    "WORKLOAD_DEFAULTS", "ArrivalSpec",
    "Filters", "FixedLength", "LengthDist", "LognormalLength", "SchemaError", "SyntheticSpec",
    "UniformLength", "WorkloadSpec", "check_pair", "parse_length",
]
