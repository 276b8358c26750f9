"""Session-keyed routing: keep a conversation on one backend so its cache is reused.

The session key is ``RequestInfo.session_id``: the conversation id in the
simulator; in the gateway the ``x-session-id`` header, else the OpenAI ``user``
field. Requests without one are routed as each peer routes them (below).
Times are the requests' arrival times (``RequestInfo.arrival_s``), so session
expiry is reproducible in the simulator and follows the wall clock live.
"""
from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Sequence

from routing.base import register
from routing.strategies.checked import CheckedStrategy
from routing.strategies.picking import argmin, at_least, choice, stable_hash
from routing.types import BackendSnapshot, RequestInfo

FALLBACKS = ("random", "least_load")


def _content_key(request: RequestInfo) -> str:
    """A sessionless request's key: its prompt (the last block hash names the whole chain)."""
    hashes = request.block_hashes
    if len(hashes):
        return f"prompt:{int(hashes[-1])}"
    return f"request:{request.request_id}"


@register
class SessionAffinity(CheckedStrategy):
    """Pin each session to the backend its first request went to, until it idles out.

    A server-side session table as llm-d's ``session-affinity-scorer`` keeps it
    with ``strategy: session_id`` (``llm-d/llm-d-router``,
    ``pkg/epp/framework/plugins/scheduling/scorer/sessionaffinity``, commit
    ebab687: a binding refreshed on every use, evicted after
    ``evictionTtlSeconds`` = 300 s unused). AIBrix's ``session-affinity``
    router (``vllm-project/aibrix``
    ``pkg/plugins/gateway/algorithms/simple_session_affinity.go``, v0.7.0)
    pins the same way but keeps the binding with the client, without expiry:
    the response's ``x-session-id`` header carries the chosen pod's address,
    and a request that sends it back goes there while that pod is ready (its
    main branch, commit e3e10f9, adds session keys placed by rendezvous
    hashing). A new or expired session, or one whose backend is not routable,
    is placed by ``fallback``: ``random`` (AIBrix's: a random ready pod) or
    ``least_load``; and then pinned there. Requests without a session are
    placed by the fallback each time.
    """

    name = "session_affinity"

    def __init__(self, *, seed: int = 0, session_ttl_s: float = 300.0, fallback: str = "random") -> None:
        super().__init__(seed=seed)
        self.session_ttl_s = float(at_least("session_ttl_s", session_ttl_s, 0.0, strict=True))
        self.fallback = choice("fallback", fallback, FALLBACKS)
        #: session -> (backend name, last use); oldest use first, so expiry pops from the front.
        self._table: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def _place(self, backends: Sequence[BackendSnapshot]) -> int:
        if self.fallback == "random":
            return self.rng.randrange(len(backends))
        return argmin([b.inflight_requests for b in backends], self.rng)

    def choose(self, request: RequestInfo, backends: Sequence[BackendSnapshot]) -> int:
        key = request.session_id
        if not key:
            return self._place(backends)
        now = request.arrival_s
        table = self._table
        cutoff = now - self.session_ttl_s
        while table:  # forget sessions idle longer than the TTL
            oldest = next(iter(table.values()))
            if oldest[1] > cutoff:
                break
            table.popitem(last=False)
        entry = table.get(key)
        pos = -1
        if entry is not None:
            for i, b in enumerate(backends):
                if b.name == entry[0]:
                    pos = i
                    break
        if pos < 0:
            pos = self._place(backends)
        table[key] = (backends[pos].name, now)
        table.move_to_end(key)
        return pos

    @property
    def sessions(self) -> int:
        return len(self._table)


class HashRing:
    """A consistent-hash ring of backend names, ``virtual_nodes`` points per name.

    Points are ``stable_hash(f"{name}:{i}")``; a key maps to the first point at or
    after its own hash, wrapping around. Removing a name moves only the keys that
    mapped to its points, about 1/N of them.
    """

    def __init__(self, names: Sequence[str], virtual_nodes: int) -> None:
        points = sorted((stable_hash(f"{name}:{i}"), name) for name in names for i in range(virtual_nodes))
        self.hashes = [h for h, _ in points]
        self.names = [n for _, n in points]

    def walk(self, key_hash: int):
        """Names clockwise from the key's position (each name once)."""
        n = len(self.hashes)
        start = bisect.bisect_left(self.hashes, key_hash)
        seen = set()
        for k in range(n):
            name = self.names[(start + k) % n]
            if name not in seen:
                seen.add(name)
                yield name


@register
class ConsistentHash(CheckedStrategy):
    """Hash the session onto a ring of backends; with ``load_factor``, bounded load.

    vLLM router's ``consistent_hash`` (vllm-project/router
    ``src/policies/consistent_hash.rs`` at 0f57038): 160 virtual nodes per
    backend, keyed by the session (its ``x-session-id`` header first, then the
    ``user`` field) or, without one, by the request content. The ring holds the
    backends the router may route to, so a backend taken out moves only its own
    keys (to the next backend clockwise).

    ``load_factor > 0`` is SGLang's ``bounded_consistent_hashing``
    (sgl-project/sglang ``sgl-model-gateway/src/policies/bounded_consistent_hashing.rs``
    at 1cfac30, ``max_load_skew`` 1.5 by default there): if the preferred
    backend's in-flight requests exceed ``load_factor`` times the mean over the
    routable backends, the key spills clockwise to the first backend within that
    bound (the preferred one if none is). 0 (the default) is the unbounded ring.
    """

    name = "consistent_hash"

    def __init__(self, *, seed: int = 0, virtual_nodes: int = 160, load_factor: float = 0.0) -> None:
        super().__init__(seed=seed)
        if isinstance(virtual_nodes, bool) or not isinstance(virtual_nodes, int) or virtual_nodes < 1:
            raise ValueError(f"virtual_nodes must be a whole number >= 1; got {virtual_nodes!r}")
        self.virtual_nodes = virtual_nodes
        lf = at_least("load_factor", load_factor, 0.0)
        if 0 < lf < 1:
            raise ValueError(
                f"load_factor must be 0 (unbounded) or >= 1 (a backend may hold that many times "
                f"the mean load); got {load_factor!r}")
        self.load_factor = float(lf)
        self._rings: dict[tuple[str, ...], HashRing] = {}

    def ring(self, names: tuple[str, ...]) -> HashRing:
        ring = self._rings.get(names)
        if ring is None:
            if len(self._rings) > 64:  # health flaps: keep the cache small
                self._rings.clear()
            ring = self._rings[names] = HashRing(names, self.virtual_nodes)
        return ring

    def choose(self, request: RequestInfo, backends: Sequence[BackendSnapshot]) -> int:
        if len(backends) == 1:
            return 0
        key = request.session_id or _content_key(request)
        names = tuple(b.name for b in backends)
        walk = self.ring(names).walk(stable_hash(key))
        preferred = next(walk)
        pos = names.index(preferred)
        if self.load_factor <= 0:
            return pos
        loads = [b.inflight_requests for b in backends]
        total = sum(loads)
        if total == 0:
            return pos
        bound = total / len(loads) * self.load_factor
        if loads[pos] <= bound:
            return pos
        for name in walk:
            i = names.index(name)
            if loads[i] <= bound:
                return i
        return pos


@register
class StickyLeastLoaded(CheckedStrategy):
    """New sessions go to the backend holding the fewest sessions; sessions stay put.

    vLLM router's ``sticky_least_loaded`` (vllm-project/router
    ``src/policies/sticky_least_loaded.rs`` at 861c578): the router counts
    active sessions per backend; a session's requests go where it was first
    assigned while that backend is routable; a new session goes to the backend
    with the fewest active sessions, ties broken by rendezvous hashing of the
    session with each backend's name (deterministic, no generator); a session
    unused for ``session_ttl_s`` (7,200 s there) is forgotten, which frees its
    slot. Requests without a session go to the fewest-sessions backend (ties by
    rendezvous hashing of the request content) and are not recorded. There is
    no explicit session end in the lab's workloads (vLLM router's
    ``/finish_session``), so sessions end only by expiry.
    """

    name = "sticky_least_loaded"

    def __init__(self, *, seed: int = 0, session_ttl_s: float = 7200.0) -> None:
        super().__init__(seed=seed)
        self.session_ttl_s = float(at_least("session_ttl_s", session_ttl_s, 0.0, strict=True))
        self._table: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._counts: dict[str, int] = {}

    def _release(self, name: str) -> None:
        c = self._counts.get(name, 0) - 1
        if c > 0:
            self._counts[name] = c
        else:
            self._counts.pop(name, None)

    def _least_loaded(self, backends: Sequence[BackendSnapshot], key: str) -> int:
        counts = self._counts
        loads = [counts.get(b.name, 0) for b in backends]
        low = min(loads)
        best, best_w = -1, -1
        for i, b in enumerate(backends):
            if loads[i] == low:
                w = stable_hash(f"{key}:{b.name}")
                if w > best_w:
                    best, best_w = i, w
        return best

    def choose(self, request: RequestInfo, backends: Sequence[BackendSnapshot]) -> int:
        key = request.session_id
        if not key:
            return self._least_loaded(backends, _content_key(request))
        now = request.arrival_s
        table = self._table
        cutoff = now - self.session_ttl_s
        while table:
            oldest = next(iter(table.values()))
            if oldest[1] > cutoff:
                break
            _, (name, _) = table.popitem(last=False)
            self._release(name)
        entry = table.get(key)
        if entry is not None:
            for i, b in enumerate(backends):
                if b.name == entry[0]:
                    table[key] = (entry[0], now)
                    table.move_to_end(key)
                    return i
            del table[key]  # its backend is not routable: reassign
            self._release(entry[0])
        pos = self._least_loaded(backends, key)
        name = backends[pos].name
        table[key] = (name, now)
        self._counts[name] = self._counts.get(name, 0) + 1
        return pos

    def sessions_on(self, name: str) -> int:
        return self._counts.get(name, 0)
