"""The hot parts of a cache-aware routing decision, with a compiled twin.

This file is the pure-Python reference. ``decision_core.pyx`` beside it is its typed
twin, which a plain install builds (``labcore.COMPILED``) and ``labcore`` loads
only while both files match the build. The twin keeps which backends hold each
block in an open-addressing table of two 64-bit words per block, instead of a dict
of Python ints, and computes ``kv_cost``'s costs over C doubles. A decision then
reads a few cache lines per probe instead of the several Python objects a dict
probe touches, which on the development VM is what its tail was made of
(docs/performance.md, "A decision over flat tables").

Both forms give the same answers: the twin is held to this file by the tests in
``tests/routing/test_decision_core.py``.
"""
from __future__ import annotations

from collections.abc import Sequence

from routing.prefix_index import BlockOwners

#: Whether ``owner_map`` can return a flat table (``OwnerTable.flat``): only in the
#: compiled twin. ``routing.inflight_tree`` keeps a per-block table of the work in
#: flight only when it can, since a dict per block was the slow path it replaced.
FLAT = False


def owner_map(bits: Sequence[int]) -> BlockOwners:
    """A map of block hash -> mask of the backends holding it, for backends with these bits.

    The reference is ``BlockOwners`` for any fleet; the twin returns its flat
    ``OwnerTable`` for fleets of up to 64 backends (a mask must fit in 64 bits).
    """
    return BlockOwners(bits)


def default_kv_costs(n: int, bs: int, prefill_tokens: Sequence[int], hits: Sequence[int],
                     active_blocks: Sequence[int], new_blocks: Sequence[int]) -> list[float]:
    """``kv_cost``'s cost per backend at Dynamo's defaults (credit 1, scale 1, request weight 0).

    ``(prefill in flight + prompt) / block size - cached blocks``, floored at 0, plus the
    blocks in flight and those the prompt adds. Multiplying by 1 and adding
    ``0 * requests`` change no value here (every cost is >= 0, so no -0.0 arises), so
    they are left out (``routing.strategies.kv_cost``).
    """
    out = []
    for pf, hit, active, new in zip(prefill_tokens, hits, active_blocks, new_blocks):
        adjusted = (pf + n) / bs - hit
        if adjusted < 0.0:
            adjusted = 0.0
        out.append(adjusted + (active + new))
    return out
