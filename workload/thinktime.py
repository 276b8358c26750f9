"""Think times: how long a user reads a reply and types before sending the next turn.

A closed-loop session (``[arrivals] sessions = "closed"``) sends turn k+1 when
turn k's reply has ended plus a think time drawn from ``[arrivals] think_time``,
a table of one of these forms (seconds):

- ``{ dist = "lognormal", mean = m, sigma = s, max = 0 }``: lognormal with mean ``m``
  (``max = 0``: no upper bound). The default, ``mean = 211.5, sigma = 0.98``, is a
  maximum-likelihood fit to the 4,657 gaps between consecutive turns of the
  sessions rebuilt from the Mooncake conversation trace shipped in
  ``workload/data`` (Qin et al., FAST 2025; ``python -m workload think-times``
  reprints the fit). Those gaps include the original service's reply time, so
  they bound the think time from above.
- ``{ dist = "exponential", mean = m }``, ``{ dist = "uniform", min = a, max = b }``,
  ``{ dist = "fixed", value = v }`` (``value = 0``: the next turn leaves as soon as
  the reply has ended, as ``vllm bench serve --max-concurrency`` and GuideLLM's
  concurrent profile send their next request).
- ``{ dist = "data", max = 0 }``: the dataset's own think times, where it has them:
  WildChat's per-message timestamps give, for each user turn, the time from the
  previous assistant message to this user message. Turns without one take the
  median of those that have one. ``max`` (seconds, 0: none) caps them: a user
  returning to a conversation the next day would otherwise hold a session open
  for a day.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np

from workload.tables import REQUIRED, Rule, SchemaError, check, defaults, join, key, read_table, \
    reject_unknown, require_table, rules

#: The default think time: see the module docstring for its source.
DEFAULT_THINK_MEAN_S = 211.5
DEFAULT_THINK_SIGMA = 0.98


@dataclass(frozen=True, kw_only=True)
class FixedThink:
    """``{dist = "fixed", value = v}``: every think time is ``v`` seconds."""

    name: ClassVar[str] = "fixed"
    dist: str = key("fixed", "str")
    value: float = key(REQUIRED, "float", ge=0)

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.full(n, self.value, dtype=np.float64)


@dataclass(frozen=True, kw_only=True)
class ExponentialThink:
    """``{dist = "exponential", mean = m}`` seconds (memoryless users)."""

    name: ClassVar[str] = "exponential"
    dist: str = key("exponential", "str")
    mean: float = key(REQUIRED, "float", gt=0)

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.exponential(self.mean, size=n)


@dataclass(frozen=True, kw_only=True)
class UniformThink:
    """``{dist = "uniform", min = a, max = b}`` seconds."""

    name: ClassVar[str] = "uniform"
    dist: str = key("uniform", "str")
    min: float = key(REQUIRED, "float", ge=0)
    max: float = key(REQUIRED, "float", ge=0)

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.uniform(self.min, self.max, size=n)


@dataclass(frozen=True, kw_only=True)
class LognormalThink:
    """``{dist = "lognormal", mean = m, sigma = s, max = 0}`` seconds, parameterised by the mean."""

    name: ClassVar[str] = "lognormal"
    dist: str = key("lognormal", "str")
    mean: float = key(REQUIRED, "float", gt=0)
    sigma: float = key(REQUIRED, "float", ge=0)
    max: float = key(0.0, "float", ge=0)

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        mu = math.log(self.mean) - self.sigma**2 / 2  # E[X] = exp(mu + sigma^2 / 2)
        x = rng.lognormal(mu, self.sigma, size=n)
        return np.minimum(x, self.max) if self.max else x


@dataclass(frozen=True, kw_only=True)
class DataThink:
    """``{dist = "data", max = 0}``: the dataset's own think times (see the module docstring)."""

    name: ClassVar[str] = "data"
    dist: str = key("data", "str")
    max: float = key(0.0, "float", ge=0)

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:  # pragma: no cover - guarded
        raise TypeError("think times from the data are taken from the pool (from_data), not drawn")

    def from_data(self, measured: np.ndarray, source: str) -> tuple[np.ndarray, int]:
        """Each turn's measured think time, gaps filled with the median; and how many were filled."""
        x = np.asarray(measured, dtype=np.float64).copy()
        known = np.isfinite(x)
        if len(x) and not known.any():
            raise ValueError(
                f"arrivals.think_time = {{dist = \"data\"}}: source {source!r} records no think "
                "times for these turns (WildChat's per-message timestamps do); give a distribution "
                "instead, e.g. { dist = \"lognormal\", mean = 211.5, sigma = 0.98 }")
        x = np.maximum(x, 0.0)
        filled = int((~known).sum())
        if filled:
            x[~known] = float(np.median(x[known]))
        if self.max:
            x = np.minimum(x, self.max)
        return x, filled


ThinkDist = FixedThink | ExponentialThink | UniformThink | LognormalThink | DataThink
THINK_DISTRIBUTIONS: dict[str, type] = {
    c.name: c for c in (LognormalThink, ExponentialThink, UniformThink, FixedThink, DataThink)}
_DIST_RULE = Rule("str", choices=tuple(THINK_DISTRIBUTIONS))


def default_think() -> LognormalThink:
    return LognormalThink(mean=DEFAULT_THINK_MEAN_S, sigma=DEFAULT_THINK_SIGMA)


def parse_think(raw: Any, path: str) -> ThinkDist:
    """A ``think_time`` table (or one already parsed) -> its typed form."""
    if isinstance(raw, tuple(THINK_DISTRIBUTIONS.values())):
        raw = asdict(raw)
    table = require_table(raw, path)
    if "dist" not in table:
        raise SchemaError(join(path, "dist"), "missing required key; expected one of "
                          + ", ".join(map(repr, THINK_DISTRIBUTIONS)))
    name = check(_DIST_RULE, table["dist"], join(path, "dist"))
    cls = THINK_DISTRIBUTIONS[name]
    reject_unknown(table, list(rules(cls)), path)
    for field_name, rule in rules(cls).items():
        if field_name != "dist" and field_name not in table and defaults(cls)[field_name] is REQUIRED:
            raise SchemaError(join(path, field_name),
                              f"missing required key for dist = {name!r}; expected {rule.allowed()}")
    spec = cls(**read_table(table, cls, path))
    if name == "uniform" and spec.max < spec.min:
        raise SchemaError(join(path, "max"), f"{spec.max:g} is below min = {spec.min:g}; "
                                             "expected max >= min")
    return spec


def describe_think(spec: ThinkDist) -> str:
    """One line for tables and reports: ``lognormal(mean=211.5 s, sigma=0.98)``."""
    params = {k: v for k, v in asdict(spec).items() if k != "dist"}
    text = ", ".join(f"{k}={v:g}{' s' if k in ('mean', 'value', 'min', 'max') else ''}"
                     for k, v in params.items() if not (k == "max" and v == 0))
    return f"{spec.name}({text})"


def session_gaps(timestamps_s: np.ndarray, sessions: np.ndarray) -> np.ndarray:
    """Seconds between consecutive requests of each session (in timestamp order)."""
    ts = np.asarray(timestamps_s, dtype=np.float64)
    ses = np.asarray(sessions)
    order = np.lexsort((ts, ses))
    same = ses[order][1:] == ses[order][:-1]
    return np.diff(ts[order])[same]


def fit_lognormal(gaps: np.ndarray) -> dict[str, float]:
    """Maximum-likelihood lognormal of positive gaps, as ``think_time``'s (mean, sigma)."""
    g = np.asarray(gaps, dtype=np.float64)
    g = g[g > 0]
    if len(g) < 2:
        raise ValueError("need at least two positive gaps to fit a lognormal")
    logs = np.log(g)
    mu, sigma = float(logs.mean()), float(logs.std())
    return {"n": int(len(g)), "mean": math.exp(mu + sigma**2 / 2), "sigma": sigma,
            "median": float(np.median(g)), "p10": float(np.percentile(g, 10)),
            "p90": float(np.percentile(g, 90))}
