"""Routing on what is in the backends' prefix caches.

``prefix_affinity`` and ``precise_prefix`` chase the longest hit (estimated from
the router's own dispatches, or mirrored exactly from KV-cache events);
``cache_aware`` is SGLang's and vLLM router's guarded rule; ``lmetric`` weighs
the prefill a backend would still have to do by its load. Hits come from the
``Router`` (``BackendSnapshot.prefix_hit_tokens`` / ``precise_hit_tokens``): the
full blocks of the prompt's leading run that the backend holds, at most the
blocks before the prompt's last token (vLLM always recomputes that one).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from routing.base import register
from routing.strategies.checked import CheckedStrategy
from routing.strategies.picking import argmax, argmin, at_least, choice, most_hit_then_least_loaded
from routing.types import BackendSnapshot, RequestInfo


def _index_blocks(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(
            f"index_blocks must be a whole number of blocks >= 0 (0: each backend's KV-cache "
            f"capacity); got {value!r}"
        )
    return value


def _delay(value: float) -> float:
    return float(at_least("kv_event_delay_s", value, 0.0))


@register
class PrefixAffinity(CheckedStrategy):
    """The backend with the longest estimated prefix hit; ties to the fewest in flight.

    The hit is the router's approximate index (``routing.prefix_index``): the
    blocks it sent to each backend, an LRU bounded per backend at
    ``index_blocks`` (0, the default: the backend's KV-cache capacity, which the
    simulator knows; 31,250 blocks otherwise). That is llm-d's approximate
    prefix-cache producer (``llm-d/llm-d-router``,
    ``pkg/epp/framework/plugins/requestcontrol/dataproducer/approximateprefix``,
    commit ebab687, 2026-08-22: ``autoTune`` sizes the LRU from the endpoint's
    cache, ``lruCapacityPerServer`` 31,250 otherwise). Its 64-token minimum block
    is not copied: the lab indexes at the engine's block size, so its estimate
    is finer and the bound is the same in blocks. With nothing cached anywhere,
    this is least-load. Pure affinity: the hot-spotting extreme the guarded
    policies exist to temper.
    """

    name = "prefix_affinity"
    needs_prefix_estimate = True
    reads_columns = True

    def __init__(self, *, seed: int = 0, index_blocks: int = 0) -> None:
        super().__init__(seed=seed)
        self.index_blocks = _index_blocks(index_blocks)

    def choose(self, request: RequestInfo, backends: Sequence[BackendSnapshot]) -> int:
        hit_blocks = getattr(backends, "hit_blocks", None)
        if hit_blocks is not None:  # the router's columns: the same decision, no snapshot read
            return most_hit_then_least_loaded(hit_blocks, backends.loads, self.rng)
        return argmax([(b.prefix_hit_tokens, -b.inflight_requests) for b in backends], self.rng)


@register
class PrecisePrefix(CheckedStrategy):
    """The backend whose *exact* cache holds the longest prefix; ties to the fewest in flight.

    The router mirrors each backend's prefix cache from its KV-cache events
    (``routing.kv_events``: vLLM's ``BlockStored``/``BlockRemoved``/
    ``AllBlocksCleared``), applied ``kv_event_delay_s`` after the engine emitted
    them, as llm-d's precise prefix-cache producer does with vLLM's ZMQ stream
    (``llm-d/llm-d-router``,
    ``pkg/epp/framework/plugins/requestcontrol/dataproducer/preciseprefixcache``,
    commit ebab687). Where a backend sent no events, or its stream skipped or
    reordered a batch, the router cannot trust the mirror and uses its
    approximate index for that backend instead (``Router.precise_fallbacks``
    counts these).
    """

    name = "precise_prefix"
    # The exact mirrors only: the router reads its approximate index for a backend
    # whose mirror it cannot trust, not for every backend.
    needs_precise_prefix = True

    def __init__(self, *, seed: int = 0, kv_event_delay_s: float = 0.0, index_blocks: int = 0) -> None:
        super().__init__(seed=seed)
        self.kv_event_delay_s = _delay(kv_event_delay_s)
        self.index_blocks = _index_blocks(index_blocks)

    #: ``choose`` reads the router's columns (``routing.types.Candidates``) when it gets them.
    reads_columns = True

    def choose(self, request: RequestInfo, backends: Sequence[BackendSnapshot]) -> int:
        precise = getattr(backends, "precise_blocks", None)
        if precise is not None:
            return most_hit_then_least_loaded(precise, backends.loads, self.rng)
        return argmax([(b.precise_hit_tokens, -b.inflight_requests) for b in backends], self.rng)


#: The defaults each router starts with. SGLang's model gateway and vLLM's router
#: (a fork of it) share the rule and, launched from their command lines, the
#: same thresholds. sglang-router 0.3.2 (PyPI, built from sgl-project/sglang
#: ``sgl-model-gateway/``; its ``sglang_router/router_args.py``): cache_threshold
#: 0.3, balance_abs_threshold 64, balance_rel_threshold 1.5, max_tree_size 2^26,
#: eviction every 60 s. vllm-router 0.1.17 (PyPI; ``vllm-router --help`` and its
#: ``vllm_router/router_args.py``): the same three thresholds, max_tree_size 2^25
#: characters per worker (2^19 blocks), eviction every 120 s.
#: Both crates' ``CacheAwareConfig::default()``
#: (``src/policies/mod.rs``), which their docs quote, is 0.5 / 32 / 1.1 with a
#: 10,000-character tree: preset ``rust_default``. Their trees count characters;
#: at 4 characters per token (llm-d's conversion) and 16-token blocks, 2^26
#: characters are 2^20 blocks, 2^25 are 2^19 and 10,000 characters 156 blocks.
CACHE_AWARE_PRESETS: dict[str, dict[str, Any]] = {
    "sglang": {"cache_threshold": 0.3, "balance_abs_threshold": 64,
               "balance_rel_threshold": 1.5, "index_blocks": 1 << 20},
    "vllm_router": {"cache_threshold": 0.3, "balance_abs_threshold": 64,
                    "balance_rel_threshold": 1.5, "index_blocks": 1 << 19},
    "rust_default": {"cache_threshold": 0.5, "balance_abs_threshold": 32,
                     "balance_rel_threshold": 1.1, "index_blocks": 10_000 // 4 // 16},
}
MISS_POLICIES = ("least_load", "smallest_index")


@register
class CacheAware(CheckedStrategy):
    """SGLang's and vLLM router's ``cache_aware``: affinity unless the fleet is imbalanced.

    With ``load`` the router's in-flight requests per backend, the fleet is
    imbalanced when both ``max - min > balance_abs_threshold`` and
    ``max > min * balance_rel_threshold``; then the request goes to the least
    loaded backend. Otherwise, if the longest prefix match covers more than
    ``cache_threshold`` of the prompt (strictly), it goes to that backend (ties:
    fewest in flight, then seeded random); else by ``miss_policy``:
    ``least_load`` is what both routers' code does (sgl-project/sglang
    ``sgl-model-gateway/src/policies/cache_aware.rs``, the source of
    sglang-router 0.3.x; vllm-project/router ``src/policies/cache_aware.rs``,
    read at commit 2f2db0d; not compared with the source of vllm-router 0.1.17,
    whose flags and defaults match), ``smallest_index`` (the
    backend whose approximate index holds the fewest blocks, "most available
    cache") is what their doc comments describe.

    ``preset`` picks the starting values (``CACHE_AWARE_PRESETS``); a parameter
    given explicitly overrides it. Differences from the originals: their trees
    index characters of the request text, the lab indexes KV blocks, so a match
    counts whole blocks and never the prompt's last token (a repeated prompt
    matches slightly under 100%); their LRU eviction runs on a timer (every 120 s
    in vllm-router 0.1.17, 60 s in sglang-router 0.3.2), the lab's index evicts
    as it fills. The imbalance test uses the backends the router may
    route to (theirs also counts unhealthy workers).
    """

    name = "cache_aware"
    needs_prefix_estimate = True

    def __init__(
        self,
        *,
        seed: int = 0,
        preset: str = "sglang",
        cache_threshold: float | None = None,
        balance_abs_threshold: float | None = None,
        balance_rel_threshold: float | None = None,
        miss_policy: str = "least_load",
        index_blocks: int | None = None,
    ) -> None:
        super().__init__(seed=seed)
        values = self._resolve(preset, cache_threshold, balance_abs_threshold,
                               balance_rel_threshold, index_blocks)
        self.preset = preset
        self.cache_threshold = float(values["cache_threshold"])
        if not 0.0 <= self.cache_threshold <= 1.0:
            raise ValueError(f"cache_threshold must be in [0, 1]; got {self.cache_threshold!r}")
        self.balance_abs_threshold = at_least("balance_abs_threshold", values["balance_abs_threshold"], 0)
        self.balance_rel_threshold = at_least("balance_rel_threshold", values["balance_rel_threshold"], 0)
        self.index_blocks = _index_blocks(values["index_blocks"])
        self.miss_policy = choice("miss_policy", miss_policy, MISS_POLICIES)

    @staticmethod
    def _resolve(preset, cache_threshold, abs_t, rel_t, index_blocks) -> dict[str, Any]:
        choice("preset", preset, tuple(CACHE_AWARE_PRESETS))
        given = {"cache_threshold": cache_threshold, "balance_abs_threshold": abs_t,
                 "balance_rel_threshold": rel_t, "index_blocks": index_blocks}
        values = dict(CACHE_AWARE_PRESETS[preset])
        values.update({k: v for k, v in given.items() if v is not None})
        for key in ("cache_threshold", "balance_abs_threshold", "balance_rel_threshold"):
            v = values[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"{key} must be a number; got {v!r}")
        return values

    @classmethod
    def effective_parameters(cls, params: dict[str, Any]) -> dict[str, Any]:
        merged = super().effective_parameters(params)
        values = cls._resolve(merged["preset"], merged["cache_threshold"],
                              merged["balance_abs_threshold"], merged["balance_rel_threshold"],
                              merged["index_blocks"])
        return {**merged, **values}

    def imbalanced(self, loads: Sequence[int]) -> bool:
        lo, hi = min(loads), max(loads)
        return hi - lo > self.balance_abs_threshold and hi > lo * self.balance_rel_threshold

    @property
    def reads_columns(self) -> bool:  # type: ignore[override]
        # Its decision reads loads and hits only, unless the miss policy reads index sizes.
        return self.miss_policy == "least_load"

    def choose(self, request: RequestInfo, backends: Sequence[BackendSnapshot]) -> int:
        hit_blocks = getattr(backends, "hit_blocks", None)
        if hit_blocks is not None:
            return self._choose_columns(request, backends, hit_blocks)
        loads = [b.inflight_requests for b in backends]
        rng = self.rng
        if self.imbalanced(loads):
            return argmin(loads, rng)
        best = max(b.prefix_hit_tokens for b in backends)
        if request.input_len > 0 and best / request.input_len > self.cache_threshold:
            return argmax([(b.prefix_hit_tokens, -b.inflight_requests) for b in backends], rng)
        if self.miss_policy == "smallest_index":
            return argmin([(b.index_blocks, b.inflight_requests) for b in backends], rng)
        return argmin(loads, rng)

    def _choose_columns(self, request: RequestInfo, backends, hit_blocks: list[int]) -> int:
        """``choose`` on the router's columns (``routing.types.Candidates``): the same
        decision and the same draws, without reading every snapshot."""
        rng = self.rng
        loads = backends.loads
        if self.imbalanced(loads):
            return argmin(loads, rng)
        top = max(hit_blocks)
        bs = backends.block_size
        if request.input_len > 0 and top * bs / request.input_len > self.cache_threshold:
            return most_hit_then_least_loaded(hit_blocks, loads, rng)
        if self.miss_policy == "smallest_index":
            # Not ``reads_columns``: the router filled the snapshots too.
            return argmin([(b.index_blocks, b.inflight_requests) for b in backends], rng)
        return argmin(loads, rng)


@register
class LMetric(CheckedStrategy):
    """Fewest new prefill tokens times (load + 1): cache affinity and load in one number.

    The LMetric score (Blitz router; arXiv 2603.15202) as SGLang's model gateway
    implements it (sgl-project/sglang ``sgl-model-gateway/src/policies/lmetric.rs``
    at acaa759): ``(prompt tokens - estimated hit) * (in-flight requests + 1)``,
    smallest wins, ties to the lower load, then fewer new tokens, then (the lab's
    choice; SGLang takes the lowest index) a seeded random one. No threshold and
    no hyperparameter: a cached backend keeps its requests until its queue has
    grown in proportion to the prefill it saves. The hit is the router's
    approximate index (SGLang's is its character tree).
    """

    name = "lmetric"
    needs_prefix_estimate = True
    reads_columns = True

    def __init__(self, *, seed: int = 0, index_blocks: int = 0) -> None:
        super().__init__(seed=seed)
        self.index_blocks = _index_blocks(index_blocks)

    def choose(self, request: RequestInfo, backends: Sequence[BackendSnapshot]) -> int:
        n = request.input_len
        hit_blocks = getattr(backends, "hit_blocks", None)
        if hit_blocks is not None:  # the router's columns: the same keys, no snapshot read
            bs = backends.block_size
            return argmin([((n - h * bs) * (load + 1), load, n - h * bs)
                           for h, load in zip(hit_blocks, backends.loads)], self.rng)
        keys = []
        for b in backends:
            new = n - b.prefix_hit_tokens
            load = b.inflight_requests
            keys.append((new * (load + 1), load, new))
        return argmin(keys, self.rng)
