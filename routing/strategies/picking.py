"""Small pure helpers the cache- and session-aware strategies share.

Ties are broken by the strategy's own seeded generator, drawn only when there is
a tie, so a run is reproducible and identical idle backends are not always
filled from position 0.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence


def argmin(keys: Sequence, rng) -> int:
    """Position of the smallest key (any comparable: numbers or tuples); random among ties."""
    best = min(keys)
    first = keys.index(best)
    if keys.count(best) == 1:
        return first
    ties = [i for i, k in enumerate(keys) if k == best]
    return ties[rng.randrange(len(ties))]


def argmax(keys: Sequence, rng) -> int:
    best = max(keys)
    first = keys.index(best)
    if keys.count(best) == 1:
        return first
    ties = [i for i, k in enumerate(keys) if k == best]
    return ties[rng.randrange(len(ties))]


def most_hit_then_least_loaded(hit_blocks: Sequence[int], loads: Sequence[int], rng) -> int:
    """``argmax`` over ``(hit, -load)`` read from the router's columns.

    The same position and the same draw as ``argmax([(h, -l) ...])``, without
    building a tuple per backend: the best hits, then the fewest in flight among
    them, then a seeded random one.
    """
    top = max(hit_blocks)
    if hit_blocks.count(top) == 1:
        return hit_blocks.index(top)
    best = [i for i, d in enumerate(hit_blocks) if d == top]
    lo = min(loads[i] for i in best)
    ties = [i for i in best if loads[i] == lo]
    return ties[0] if len(ties) == 1 else ties[rng.randrange(len(ties))]


def softmin_sample(costs: Sequence[float], temperature: float, rng) -> int:
    """Draw a position with probability proportional to exp(-normalised cost / temperature).

    Costs are min-max normalised first (so the temperature means the same at any
    scale), as Dynamo's KV router does: the cheapest backend has weight 1 and the
    dearest exp(-1 / temperature); all equal costs give a uniform draw.
    """
    lo, hi = min(costs), max(costs)
    if hi == lo:
        return rng.randrange(len(costs))
    scale = 1.0 / ((hi - lo) * temperature)
    weights = [math.exp(-(c - lo) * scale) for c in costs]
    u = rng.random() * sum(weights)
    acc = 0.0
    for i, w in enumerate(weights):
        acc += w
        if u < acc:
            return i
    return len(costs) - 1


def stable_hash(text: str) -> int:
    """A 64-bit hash that is the same in every process (Python's ``hash`` is salted)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def choice(name: str, value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


def at_least(name: str, value: float, low: float, *, strict: bool = False) -> float:
    ok = value > low if strict else value >= low
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok or value != value:
        rel = ">" if strict else ">="
        raise ValueError(f"{name} must be a number {rel} {low:g}; got {value!r}")
    return value


def session_key(request) -> str:
    """The request's session: the conversation in the simulator, ``x-session-id``/``user`` live.

    Empty when the request carries none.
    """
    return request.session_id
