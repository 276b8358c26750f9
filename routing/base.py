"""The ``Strategy`` interface and the registry that builds strategies by name.

A strategy is a pure decision (rule "pure decision" in docs/architecture.md):
``choose`` reads the request and the backend snapshots and returns a position in
that sequence. No I/O, no clock, no
asyncio or SimPy; randomness only from the seed it was built with. That is what
lets one object run unchanged in the simulator and in the gateway.
"""
from __future__ import annotations

import inspect
import random
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from routing.types import BackendSnapshot, Outcome, RequestInfo


class Strategy:
    """Base class: subclasses set ``name`` and implement ``choose``.

    Class attributes tell the router what to prepare, so strategies that do not
    need an expensive input do not pay for it:

    - ``needs_prefix_estimate``: fill ``BackendSnapshot.prefix_hit_tokens`` and
      ``index_blocks`` from the router's approximate index.
    - ``needs_precise_prefix``: fill ``precise_hit_tokens`` from each backend's
      KV-cache events, delivered ``kv_event_delay_s`` after they were emitted (from
      the approximate index where a backend's mirror cannot be trusted). Without
      ``needs_prefix_estimate`` as well, ``prefix_hit_tokens`` is then that same hit.
    - ``needs_active_work``: fill ``inflight_prefill_tokens``, ``active_blocks``
      and ``new_blocks`` (``routing.active``).
    - ``needs_scrape``: keep scraped metrics and their age up to date.

    - ``reads_columns``: ``choose`` reads only ``Candidates`` columns when it gets
      them (``routing.types.Candidates``), so the router need not write the
      per-request fields into every snapshot (a speed-up on large fleets).

    A strategy may set these per instance (a configurable profile does). Two
    instance attributes tune the router's indexes: ``kv_event_delay_s`` and
    ``index_blocks`` (the approximate index's capacity per backend; 0 = the
    backend's own KV-cache capacity when the router knows it).
    """

    name: ClassVar[str] = ""
    needs_prefix_estimate: ClassVar[bool] = False
    needs_precise_prefix: ClassVar[bool] = False
    needs_active_work: ClassVar[bool] = False
    needs_scrape: ClassVar[bool] = False
    reads_columns: bool = False
    kv_event_delay_s: float = 0.0
    index_blocks: int = 0

    def __init__(self, *, seed: int = 0) -> None:
        self.seed = seed
        # A private generator, never the global one (docs/architecture.md, rule
        # "injected time and randomness").
        self.rng = random.Random(seed)

    def choose(self, request: RequestInfo, backends: Sequence[BackendSnapshot]) -> int:
        """Return the position in ``backends`` (not ``BackendSnapshot.index``)."""
        raise NotImplementedError

    def observe(self, outcome: Outcome) -> None:
        """Learn from a finished request. Heuristics ignore it."""

    def bind(self, block_size: int) -> None:
        """Told by the ``Router`` it runs in: the KV block size its hashes use."""

    @classmethod
    def check_parameters(cls, params: dict[str, Any]) -> None:
        """Raise ``ValueError`` naming a parameter whose *value* is not allowed.

        Called by ``routing.validate`` (so by scenario loading, before anything
        runs). The default checks nothing beyond names; strategies whose
        construction is cheap and pure check by constructing themselves.
        """

    @classmethod
    def effective_parameters(cls, params: dict[str, Any]) -> dict[str, Any]:
        """Every parameter with the value a strategy built from ``params`` uses."""
        return {**parameters(cls.name), **params}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, seed={self.seed})"


_REGISTRY: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make a strategy buildable from its TOML ``name``."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} must set a non-empty `name`")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"strategy name {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _ensure_loaded() -> None:
    # Importing the package registers the built-in strategies.
    import routing.strategies  # noqa: F401


def available() -> list[str]:
    """Names of every registered strategy, sorted."""
    _ensure_loaded()
    return sorted(_REGISTRY)


def parameters(name: str) -> dict[str, Any]:
    """The keyword parameters a strategy accepts (besides ``seed``) and their defaults."""
    cls = strategy_class(name)
    params: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.name in ("self", "seed") or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                continue
            params[p.name] = None if p.default is inspect.Parameter.empty else p.default
    return params


def strategy_class(name: str) -> type[Strategy]:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown strategy {name!r}; available: {', '.join(available())}"
        ) from None


def validate(name: str, params: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming a bad or missing parameter and the allowed ones."""
    allowed = parameters(name)
    for key in params:
        if key not in allowed:
            allowed_txt = ", ".join(sorted(allowed)) or "(none)"
            raise ValueError(
                f"strategy {name!r} has no parameter {key!r}; allowed: {allowed_txt}"
            )
    missing = [key for key in required_parameters(name) if key not in params]
    if missing:
        raise ValueError(f"strategy {name!r} needs parameter(s) {', '.join(missing)}")
    strategy_class(name).check_parameters(params)


def effective_parameters(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """All of a strategy's parameters as a build from ``params`` resolves them."""
    return strategy_class(name).effective_parameters(params)


def required_parameters(name: str) -> list[str]:
    """Parameters without a default: a scenario must give them."""
    init = strategy_class(name).__init__
    return [
        p.name
        for p in inspect.signature(init).parameters.values()
        if p.name not in ("self", "seed")
        and p.default is inspect.Parameter.empty
        and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    ]


def build(name: str, *, seed: int = 0, **params: Any) -> Strategy:
    """Build a strategy from its registered name and TOML parameters."""
    validate(name, params)
    return strategy_class(name)(seed=seed, **params)


StrategyFactory = Callable[[], Strategy]
