"""The llm-d endpoint-picker plugins the lab implements: scorers, filters, pickers.

Each class follows one plugin of ``llm-d/llm-d-router`` (commit ebab687,
2026-08-22; paths under ``pkg/epp/framework/plugins/``) and takes the plugin's
own YAML parameters (camelCase, with the same defaults), so an
``EndpointPickerConfig`` file loads unchanged. Data the plugins read maps onto
what the lab's router sees:

- scraped metrics (``queue``/``kv-cache``/``running``/``load-aware`` scorers):
  ``BackendSnapshot.waiting``/``kv_usage``/``running``, 0 before a backend's
  first scrape (llm-d's zero-valued metrics);
- the in-flight load producer: the router's own in-flight requests, and the
  uncached prompt tokens of requests before their first token
  (``inflight_prefill_tokens``, as ``inflight-load-producer`` releases prompt
  tokens at the first streamed chunk);
- the approximate and precise prefix producers: the router's approximate index
  and its KV-event mirror (``prefix_hit_tokens`` / ``precise_hit_tokens``).

Scorers return one score in [0, 1] per candidate; filters return the positions
they keep; pickers pick a position. Plugins with state (no-hit LRU, session
affinity) learn the pick in ``after_pick`` (llm-d's ``PreRequest``).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from operator import attrgetter
from typing import Any

from routing.types import BackendSnapshot, RequestInfo

PRECISE_PRODUCER = "precise-prefix-cache-producer"
APPROX_PRODUCER = "approx-prefix-cache-producer"


class PluginError(ValueError):
    """A plugin or parameter the lab cannot load, with what it can."""


def _num(v: float) -> float:
    """A scraped value, 0 when the backend has not been scraped yet (NaN)."""
    return 0.0 if v != v else v


_WAITING, _RUNNING, _KV_USAGE = attrgetter("waiting"), attrgetter("running"), attrgetter("kv_usage")


def _scraped(backends, field: attrgetter) -> list[float]:
    """``[_num(field(b)) for b in backends]``, the same values for less work per decision.

    The field is read in one C-level pass; a sum is NaN whenever any value is, so the
    per-value NaN check runs only when some backend has not been scraped yet.
    """
    values = list(map(field, backends))
    total = sum(values)
    if total != total:
        return [0.0 if v != v else v for v in values]
    return values


class Plugin:
    """Base: ``TYPE`` is llm-d's plugin type, ``PARAMS`` its parameters and defaults."""

    TYPE = ""
    KIND = ""  # "scorer", "filter", "picker" or "producer"
    PARAMS: dict[str, Any] = {}
    #: What the plugin needs the router to prepare (see ``routing.Strategy``).
    needs_scrape = False
    needs_active_work = False

    def __init__(self, name: str, params: dict[str, Any] | None, producers: dict[str, "Plugin"]) -> None:
        self.name = name
        self.params = self.read_params(params or {})

    @classmethod
    def read_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(params, dict):
            raise PluginError(f"plugin {cls.TYPE!r}: parameters must be a mapping; got {params!r}")
        for key in params:
            if key not in cls.PARAMS:
                allowed = ", ".join(sorted(cls.PARAMS)) or "(none)"
                raise PluginError(
                    f"plugin {cls.TYPE!r} has no parameter {key!r} (in the lab); allowed: {allowed}")
        out = dict(cls.PARAMS)
        for key, value in params.items():
            default = cls.PARAMS[key]
            if isinstance(default, bool):
                ok = isinstance(value, bool)
            elif isinstance(default, (int, float)):
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            elif isinstance(default, str):
                ok = isinstance(value, str)
            else:
                ok = True
            if not ok:
                raise PluginError(
                    f"plugin {cls.TYPE!r} parameter {key!r}: got {value!r}; expected a value like {default!r}")
            out[key] = value
        return out

    def after_pick(self, request: RequestInfo, backends: Sequence[BackendSnapshot], pos: int) -> None:
        """The profile routed ``request`` to ``backends[pos]``."""


# --- producers ------------------------------------------------------------------------------

class ApproxPrefixProducer(Plugin):
    """``approx-prefix-cache-producer``: the router's LRU index of what it sent where.

    ``autoTune`` (default) sizes each backend's LRU from its KV-cache capacity
    (the lab's ``index_blocks = 0``); otherwise ``lruCapacityPerServer``.
    ``maxPrefixTokensToMatch`` caps the matched prefix; ``blockSizeTokens`` is
    accepted but the lab always indexes at the engine's block size.
    """

    TYPE, KIND = APPROX_PRODUCER, "producer"
    PARAMS = {"autoTune": True, "blockSizeTokens": 16, "maxPrefixBlocksToMatch": 2048,
              "maxPrefixTokensToMatch": 131072, "lruCapacityPerServer": 31250, "blockSize": 0}
    precise = False

    @property
    def index_blocks(self) -> int:
        return 0 if self.params["autoTune"] else int(self.params["lruCapacityPerServer"])

    def max_tokens(self, block_size: int) -> int:
        p = self.params
        if p["maxPrefixTokensToMatch"] > 0:
            return int(p["maxPrefixTokensToMatch"])
        if p["maxPrefixBlocksToMatch"] > 0:
            return int(p["maxPrefixBlocksToMatch"]) * block_size
        return 1 << 62


class PrecisePrefixProducer(ApproxPrefixProducer):
    """``precise-prefix-cache-producer``: each backend's cache mirrored from its KV events.

    Its tokenizer, indexer and event-transport settings describe llm-d's
    deployment and are accepted unread; the delay before events apply is the
    lab's ``kv_event_delay_s`` (a ``weighted`` parameter).
    """

    TYPE = PRECISE_PRODUCER
    PARAMS = {"tokenProcessorConfig": None, "indexerConfig": None, "kvEventsConfig": None,
              "speculativeIndexing": False, "speculativeTTL": "2s"}
    precise = True

    @property
    def index_blocks(self) -> int:
        return 0

    def max_tokens(self, block_size: int) -> int:
        return 1 << 62


class InFlightLoadProducer(Plugin):
    """``inflight-load-producer``: the router's own in-flight counts (always kept)."""

    TYPE, KIND = "inflight-load-producer", "producer"
    PARAMS = {"addEstimatedOutputTokens": False, "outputRatio": 1.5, "maxEstimatedOutputTokens": 0}

    def __init__(self, name, params, producers) -> None:
        super().__init__(name, params, producers)
        if self.params["addEstimatedOutputTokens"]:
            raise PluginError(
                "plugin 'inflight-load-producer': addEstimatedOutputTokens: true is not modelled in "
                "the lab (in-flight tokens are uncached prompt tokens); remove it or set it to false")


class DataLayerPlugin(Plugin):
    """Accepted and unread: scraping, tokenizing and parsing are the lab's own machinery."""

    KIND = "producer"
    PARAMS: dict[str, Any] = {}

    @classmethod
    def read_params(cls, params):  # their parameters configure transports the lab does not have
        return dict(params) if isinstance(params, dict) else {}


def _data_layer(type_name: str) -> type[DataLayerPlugin]:
    return type(f"DataLayer_{type_name}", (DataLayerPlugin,), {"TYPE": type_name})


class SingleProfileHandler(Plugin):
    TYPE, KIND = "single-profile-handler", "handler"


# --- scorers --------------------------------------------------------------------------------

class Scorer(Plugin):
    KIND = "scorer"

    def score(self, request: RequestInfo, backends: Sequence[BackendSnapshot]) -> list[float]:
        raise NotImplementedError


def _min_max_low_is_best(values: list[float]) -> list[float]:
    lo, hi = min(values), max(values)
    if hi == lo:
        return [1.0] * len(values)
    span = hi - lo
    return [(hi - v) / span for v in values]


class QueueScorer(Scorer):
    """``queue-scorer``: min-max normalised scraped waiting requests (fewest = 1)."""

    TYPE = "queue-scorer"
    needs_scrape = True

    def score(self, request, backends):
        return _min_max_low_is_best(_scraped(backends, _WAITING))


class RunningRequestsScorer(Scorer):
    """``running-requests-size-scorer``: min-max normalised scraped running requests."""

    TYPE = "running-requests-size-scorer"
    needs_scrape = True

    def score(self, request, backends):
        return _min_max_low_is_best(_scraped(backends, _RUNNING))


class KvCacheUtilizationScorer(Scorer):
    """``kv-cache-utilization-scorer``: 1 - scraped KV-cache usage."""

    TYPE = "kv-cache-utilization-scorer"
    needs_scrape = True

    def score(self, request, backends):
        return [1.0 - v for v in _scraped(backends, _KV_USAGE)]


class LoadAwareScorer(Scorer):
    """``load-aware-scorer``: 0.5 for an empty queue, down to 0 at ``threshold`` waiting."""

    TYPE = "load-aware-scorer"
    PARAMS = {"threshold": 128}
    needs_scrape = True

    def __init__(self, name, params, producers) -> None:
        super().__init__(name, params, producers)
        if self.params["threshold"] <= 0:
            self.params["threshold"] = 128  # llm-d replaces non-positive values by the default

    def score(self, request, backends):
        t = self.params["threshold"]
        out = []
        for b in backends:
            w = _num(b.waiting)
            out.append(0.5 if w <= 0 else (0.0 if w >= t else 0.5 * (1.0 - w / t)))
        return out


class ActiveRequestScorer(Scorer):
    """``active-request-scorer``: fewer router in-flight requests score higher.

    Score ``(max - count) / max * maxBusyScore``; a backend with at most
    ``idleThreshold`` in flight scores 1 (llm-d PR #669's guard against
    hot-spotting).
    """

    TYPE = "active-request-scorer"
    PARAMS = {"requestTimeout": "", "idleThreshold": 0, "maxBusyScore": 1.0,
              "inFlightLoadProducerName": ""}

    def __init__(self, name, params, producers) -> None:
        super().__init__(name, params, producers)
        p = self.params
        self.idle = max(int(p["idleThreshold"]), 0)
        mb = p["maxBusyScore"]
        self.max_busy = mb if 0.0 <= mb <= 1.0 else 1.0  # llm-d ignores out-of-range values

    def score(self, request, backends):
        counts = [b.inflight_requests for b in backends]
        top = max(counts)
        idle, mb = self.idle, self.max_busy
        return [1.0 if c <= idle else (top - c) / top * mb for c in counts]


class Prefixed(Scorer):
    """Shared by plugins that read a prefix producer (``prefixMatchInfoProducerName``)."""

    def __init__(self, name, params, producers) -> None:
        super().__init__(name, params, producers)
        ref = self.params.get("prefixMatchInfoProducerName", "") or ""
        self.producer = resolve_producer(ref, producers)

    def hits(self, request: RequestInfo, backends, block_size: int) -> tuple[list[int], int]:
        """Matched blocks per backend and the prompt's total blocks, both capped as llm-d does."""
        p = self.producer
        total = len(request.block_hashes)
        cap_blocks = p.max_tokens(block_size) // block_size
        # The router's approximate column (``routing.types.Candidates``), when it handed one.
        column = None if p.precise else getattr(backends, "hit_blocks", None)
        if column is not None:
            return ([min(h, cap_blocks) for h in column] if cap_blocks < total else column,
                    min(total, cap_blocks))
        if cap_blocks < total:
            total = cap_blocks
            if p.precise:
                return [min(b.precise_hit_tokens // block_size, total) for b in backends], total
            return [min(b.prefix_hit_tokens // block_size, total) for b in backends], total
        # Hits never exceed the prompt's blocks: no cap to apply.
        if p.precise:
            return [b.precise_hit_tokens // block_size for b in backends], total
        return [b.prefix_hit_tokens // block_size for b in backends], total


def resolve_producer(ref: str, producers: dict[str, Plugin]) -> ApproxPrefixProducer:
    """The producer a prefix plugin reads: named, else llm-d's auto-spawned approximate one."""
    if not ref:
        for p in producers.values():
            if isinstance(p, ApproxPrefixProducer) and not p.precise:
                return p
        return producers.setdefault(f"{APPROX_PRODUCER}(auto)", ApproxPrefixProducer(APPROX_PRODUCER, {}, {}))
    p = producers.get(ref)
    if p is None and ref == PRECISE_PRODUCER:
        p = producers.setdefault(ref, PrecisePrefixProducer(ref, {}, {}))
    if p is None and ref == APPROX_PRODUCER:
        p = producers.setdefault(ref, ApproxPrefixProducer(ref, {}, {}))
    if not isinstance(p, ApproxPrefixProducer):
        names = ", ".join(sorted(k for k, v in producers.items() if isinstance(v, ApproxPrefixProducer)))
        raise PluginError(
            f"prefixMatchInfoProducerName {ref!r} names no prefix-cache producer; configured: "
            f"{names or '(none)'}; or {PRECISE_PRODUCER!r} / {APPROX_PRODUCER!r}")
    return p


class PrefixCacheScorer(Prefixed):
    """``prefix-cache-scorer``: matched/total prompt blocks, plus an optional length term.

    ``score = w * min(1, matched tokens / matchLengthScaleTokens)^2 + (1 - w) * ratio``
    with ``w = matchLengthWeight`` (0 by default; llm-d PR #1459). The producer is
    approximate unless ``prefixMatchInfoProducerName`` names a precise one.
    """

    TYPE = "prefix-cache-scorer"
    PARAMS = {"prefixMatchInfoProducerName": "", "matchLengthWeight": 0.0, "matchLengthScaleTokens": 8192}
    block_size = 16

    def __init__(self, name, params, producers) -> None:
        super().__init__(name, params, producers)
        w = self.params["matchLengthWeight"]
        if not 0.0 <= w <= 1.0:
            raise PluginError(f"plugin {self.TYPE!r}: matchLengthWeight must be in [0, 1]; got {w!r}")
        if w > 0 and self.params["matchLengthScaleTokens"] <= 0:
            raise PluginError(f"plugin {self.TYPE!r}: matchLengthScaleTokens must be > 0 when "
                              f"matchLengthWeight > 0")

    def score(self, request, backends):
        bs = self.block_size
        matched, total = self.hits(request, backends, bs)
        if total == 0:
            return [0.0] * len(backends)
        w = self.params["matchLengthWeight"]
        if w == 0:
            return [m / total for m in matched]
        scale = self.params["matchLengthScaleTokens"]
        out = []
        for m in matched:
            x = min(1.0, m * bs / scale)
            out.append(w * x * x + (1.0 - w) * (m / total))
        return out


class PrecisePrefixCacheScorer(PrefixCacheScorer):
    """``precise-prefix-cache-scorer`` (deprecated in llm-d): a prefix-cache scorer on the
    precise producer. Its own producer parameters are accepted unread."""

    TYPE = "precise-prefix-cache-scorer"
    PARAMS = {**PrefixCacheScorer.PARAMS, "tokenProcessorConfig": None, "indexerConfig": None,
              "kvEventsConfig": None}

    def __init__(self, name, params, producers) -> None:
        params = dict(params or {})
        params.setdefault("prefixMatchInfoProducerName", PRECISE_PRODUCER)
        super().__init__(name, params, producers)


class TokenLoadScorer(Prefixed):
    """``token-load-scorer``: ``1 - min(tokens, queueThresholdTokens) / queueThresholdTokens``.

    ``tokens`` = uncached prompt tokens in flight there plus this request's
    uncached tokens there (llm-d adds ``UncachedRequestTokens``).
    """

    TYPE = "token-load-scorer"
    PARAMS = {"queueThresholdTokens": 4194304, "inFlightLoadProducerName": "",
              "prefixMatchInfoProducerName": ""}
    needs_active_work = True
    block_size = 16

    def score(self, request, backends):
        thr = self.params["queueThresholdTokens"]
        if thr <= 0:
            thr = 4194304
        bs = self.block_size
        matched, _ = self.hits(request, backends, bs)
        out = []
        for b, m in zip(backends, matched):
            tokens = b.inflight_prefill_tokens + max(request.input_len - m * bs, 0)
            out.append(1.0 if tokens <= 0 else 1.0 - min(tokens, thr) / thr)
        return out


class NoHitLRUScorer(Prefixed):
    """``no-hit-lru-scorer``: spread cold requests over the least recently cold-used backends.

    A request is cold when no candidate has a prefix hit. Cold: never-used
    backends first (1, then down in candidate order), then by how long ago each
    last took a cold request (least recent highest), ``1 - rank / (n - 1)``.
    Warm: 0.5 everywhere. Only cold picks update the LRU (``lruSize`` backends).
    """

    TYPE = "no-hit-lru-scorer"
    PARAMS = {"prefixPluginType": "prefix-cache-scorer", "prefixPluginName": "prefix-cache-scorer",
              "lruSize": 1024, "prefixMatchInfoProducerName": ""}
    block_size = 16

    def __init__(self, name, params, producers) -> None:
        super().__init__(name, params, producers)
        size = self.params["lruSize"]
        self.size = size if size > 0 else 1024
        self._lru: OrderedDict[str, None] = OrderedDict()  # oldest first
        self._cold = False

    def score(self, request, backends):
        matched, _ = self.hits(request, backends, self.block_size)
        n = len(backends)
        self._cold = not any(matched)
        if not self._cold:
            return [0.5] * n
        if n == 1:
            return [1.0]
        position = {name: i for i, name in enumerate(self._lru)}
        never = [i for i, b in enumerate(backends) if b.name not in position]
        out = [0.0] * n
        for k, i in enumerate(never):
            out[i] = 1.0 - k / (n - 1)
        for i, b in enumerate(backends):
            if b.name in position:
                rank = len(never) + position[b.name]
                out[i] = max(1.0 - rank / (n - 1), 0.0)
        return out

    def after_pick(self, request, backends, pos) -> None:
        if not self._cold:
            return
        lru = self._lru
        name = backends[pos].name
        lru[name] = None
        lru.move_to_end(name)
        while len(lru) > self.size:
            lru.popitem(last=False)


class SessionAffinityScorer(Scorer):
    """``session-affinity-scorer``: 1 for the backend the session last went to, else 0.

    ``encoded_endpoint_header`` (llm-d's default): the client echoes the last
    backend back, so the binding follows every pick and never expires.
    ``session_id``: a server-side binding refreshed on use and dropped after
    ``sessionIdConfig.evictionTtlSeconds`` (300) unused. Both rebind to wherever
    the request went. The session is ``RequestInfo.session_id``.
    """

    TYPE = "session-affinity-scorer"
    PARAMS = {"strategy": "encoded_endpoint_header", "encodedEndpointHeaderConfig": None,
              "sessionIdConfig": None, "profileName": ""}

    def __init__(self, name, params, producers) -> None:
        super().__init__(name, params, producers)
        strategy = self.params["strategy"]
        if strategy not in ("encoded_endpoint_header", "session_id"):
            raise PluginError(f"plugin {self.TYPE!r}: strategy must be 'encoded_endpoint_header' or "
                              f"'session_id'; got {strategy!r}")
        self.ttl = math.inf
        if strategy == "session_id":
            cfg = self.params["sessionIdConfig"] or {}
            if not isinstance(cfg, dict):
                raise PluginError(f"plugin {self.TYPE!r}: sessionIdConfig must be a mapping")
            self.ttl = float(cfg.get("evictionTtlSeconds", 300.0))
        #: session -> (backend, last use), least recently used first; bounded by the
        #: TTL and by ``MAX_SESSIONS`` (the oldest binding goes first).
        self._bound: OrderedDict[str, tuple[str, float]] = OrderedDict()

    MAX_SESSIONS = 1_000_000

    def score(self, request, backends):
        out = [0.0] * len(backends)
        key = request.session_id
        bound = self._bound
        cutoff = request.arrival_s - self.ttl
        while bound and next(iter(bound.values()))[1] <= cutoff:
            bound.popitem(last=False)
        entry = bound.get(key) if key else None
        if entry is not None and request.arrival_s - entry[1] < self.ttl:
            for i, b in enumerate(backends):
                if b.name == entry[0]:
                    out[i] = 1.0
                    break
        return out

    def after_pick(self, request, backends, pos) -> None:
        key = request.session_id
        if key:
            bound = self._bound
            bound[key] = (backends[pos].name, request.arrival_s)
            bound.move_to_end(key)
            if len(bound) > self.MAX_SESSIONS:
                bound.popitem(last=False)


# --- filters --------------------------------------------------------------------------------

class Filter(Plugin):
    KIND = "filter"

    def keep(self, request, backends, rng) -> list[int]:
        raise NotImplementedError


class DecodeFilter(Filter):
    """``decode-filter``: keeps backends that decode; every lab backend does (no P/D roles)."""

    TYPE = "decode-filter"

    def keep(self, request, backends, rng):
        return list(range(len(backends)))


class PrefixCacheAffinityFilter(Filter):
    """``prefix-cache-affinity-filter``: keep the cache-warm backends unless they are slow.

    Backends whose match ratio reaches ``affinityThreshold`` (0.80) are sticky;
    with none, all are kept. With probability ``explorationProbability`` the
    gate is skipped. TTFT gate: if the best sticky backend's estimated TTFT
    (in-flight uncached tokens / ``peakPrefillThroughput`` tokens/s) exceeds the
    best other's by more than ``maxTTFTPenaltyMs``, all are kept.
    """

    TYPE = "prefix-cache-affinity-filter"
    PARAMS = {"affinityThreshold": 0.80, "explorationProbability": 0.0, "maxTTFTPenaltyMs": 18000.0,
              "ttftSource": "prefillThroughput", "peakPrefillThroughput": 15928.0,
              "prefixMatchInfoProducerName": "", "latencyPredictionInfoProducerName": "",
              "inFlightLoadProducerName": ""}
    needs_active_work = True
    block_size = 16

    def __init__(self, name, params, producers) -> None:
        super().__init__(name, params, producers)
        if self.params["ttftSource"] != "prefillThroughput":
            raise PluginError(f"plugin {self.TYPE!r}: ttftSource {self.params['ttftSource']!r} is not "
                              f"modelled in the lab; use 'prefillThroughput'")
        if self.params["peakPrefillThroughput"] <= 0:
            raise PluginError(f"plugin {self.TYPE!r}: peakPrefillThroughput must be > 0")
        self.producer = resolve_producer(self.params["prefixMatchInfoProducerName"], producers)

    def keep(self, request, backends, rng):
        p = self.params
        n = len(backends)
        every = list(range(n))
        if n <= 1 or p["affinityThreshold"] <= 0:
            return every
        if rng.random() < p["explorationProbability"]:
            return every
        bs = self.block_size
        cap = self.producer.max_tokens(bs) // bs
        total = min(len(request.block_hashes), cap)
        sticky, other = [], []
        for i, b in enumerate(backends):
            hit = b.precise_hit_tokens if self.producer.precise else b.prefix_hit_tokens
            ratio = min(hit // bs, total) / total if total else 0.0
            (sticky if ratio >= p["affinityThreshold"] else other).append(i)
        if not sticky:
            return every
        if p["maxTTFTPenaltyMs"] > 0 and other:
            rate = p["peakPrefillThroughput"]
            best = min(backends[i].inflight_prefill_tokens for i in sticky) / rate * 1000
            best_other = min(backends[i].inflight_prefill_tokens for i in other) / rate * 1000
            if best - best_other > p["maxTTFTPenaltyMs"]:
                return every
        return sticky


# --- pickers --------------------------------------------------------------------------------

class Picker(Plugin):
    KIND = "picker"
    PARAMS = {"maxNumOfEndpoints": 1}

    def pick(self, scores: list[float], rng) -> int:
        raise NotImplementedError


class MaxScorePicker(Picker):
    """``max-score-picker``: the highest score; ties uniformly at random (llm-d shuffles first)."""

    TYPE = "max-score-picker"

    def pick(self, scores, rng):
        best = max(scores)
        if best == best and scores.count(best) == 1:  # one best: no tie to break, no draw
            return scores.index(best)
        ties = [i for i, s in enumerate(scores) if s == best]
        return ties[0] if len(ties) == 1 else ties[rng.randrange(len(ties))]


class RandomPicker(Picker):
    TYPE = "random-picker"

    def pick(self, scores, rng):
        return rng.randrange(len(scores))


class WeightedRandomPicker(Picker):
    """``weighted-random-picker``: probability proportional to score (A-Res keys ``u^(1/score)``).

    Zero scores are never picked unless all are zero (then uniformly at random).
    """

    TYPE = "weighted-random-picker"

    def pick(self, scores, rng):
        best, best_key = -1, -1.0
        for i, s in enumerate(scores):
            if s > 0:
                u = rng.random() or 1e-10
                key = u ** (1.0 / s)
                if key > best_key:
                    best, best_key = i, key
        return rng.randrange(len(scores)) if best < 0 else best


PLUGINS: dict[str, type[Plugin]] = {
    cls.TYPE: cls
    for cls in (
        QueueScorer, RunningRequestsScorer, KvCacheUtilizationScorer, LoadAwareScorer,
        ActiveRequestScorer, TokenLoadScorer, PrefixCacheScorer, PrecisePrefixCacheScorer,
        NoHitLRUScorer, SessionAffinityScorer, DecodeFilter, PrefixCacheAffinityFilter,
        MaxScorePicker, RandomPicker, WeightedRandomPicker, ApproxPrefixProducer,
        PrecisePrefixProducer, InFlightLoadProducer, SingleProfileHandler,
    )
}
for _t in ("token-producer", "metrics-data-source", "core-metrics-extractor", "endpoint-notification-source",
           "models-data-source", "models-data-extractor", "openai-parser",
           "anthropic-parser", "vllmhttp-parser", "passthrough-parser"):
    PLUGINS[_t] = _data_layer(_t)


def supported(kind: str | None = None) -> list[str]:
    return sorted(t for t, c in PLUGINS.items() if kind is None or c.KIND == kind)
