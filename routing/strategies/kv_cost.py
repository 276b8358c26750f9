"""``kv_cost``: NVIDIA Dynamo's KV-router cost, in blocks.

For each backend (``ai-dynamo/dynamo``, ``lib/kv-router/src/scheduling/selector/default.rs``
at a4bdb9b; the formula in ``docs/components/router/router-concepts.md``,
"Routing Concepts", read at commit 03037af)::

    raw_prefill   = (prefill tokens in flight there + prompt tokens) / block_size
    adjusted      = max(0, raw_prefill - overlap_score_credit * cached prefix blocks)
    decode_blocks = distinct KV blocks in flight there + blocks this prompt adds
    cost          = prefill_load_scale * adjusted + decode_blocks
                    + decode_active_request_weight * requests in flight there

Temperature 0 takes the cheapest (ties: seeded random, as Dynamo breaks exact
ties at random); a positive temperature samples with probability proportional
to ``exp(-normalised cost / temperature)``, costs min-max normalised first.
Dynamo's defaults: credit 1.0, scale 1.0, active-request weight 0, temperature
0, and cache overlaps from KV events (``index = "precise"``; its
``--no-router-kv-events`` mode predicts the cache from its own routing, the lab's
``"approximate"``). Prefill tokens in flight are the uncached tokens of requests
whose first token has not come back (``Router.first_token``), as Dynamo's
default releases prompt load at the first output token. Dynamo's optional
per-tier (host, disk, shared) credits and its overlap-credit decay are not
modelled: the lab's engines have one cache tier.
"""
from __future__ import annotations

from collections.abc import Sequence

from routing.base import register
from routing.decision_core import default_kv_costs
from routing.strategies.checked import CheckedStrategy
from routing.strategies.picking import argmin, at_least, choice, softmin_sample
from routing.types import BackendSnapshot, RequestInfo

INDEXES = ("precise", "approximate")


@register
class KvCost(CheckedStrategy):
    name = "kv_cost"
    needs_prefix_estimate = True
    needs_active_work = True

    def __init__(
        self,
        *,
        seed: int = 0,
        overlap_score_credit: float = 1.0,
        prefill_load_scale: float = 1.0,
        decode_active_request_weight: float = 0.0,
        temperature: float = 0.0,
        index: str = "precise",
        kv_event_delay_s: float = 0.0,
        index_blocks: int = 0,
    ) -> None:
        super().__init__(seed=seed)
        self.overlap_score_credit = at_least("overlap_score_credit", overlap_score_credit, 0.0)
        self.prefill_load_scale = at_least("prefill_load_scale", prefill_load_scale, 0.0)
        self.decode_active_request_weight = at_least(
            "decode_active_request_weight", decode_active_request_weight, 0.0)
        self.temperature = at_least("temperature", temperature, 0.0)
        self.index = choice("index", index, INDEXES)
        # Instance attributes shadow the class flags: "precise" reads events (the router
        # falls back to its approximate index per backend), "approximate" reads the estimate.
        self.needs_precise_prefix = self.index == "precise"
        self.needs_prefix_estimate = self.index == "approximate"
        self.kv_event_delay_s = float(at_least("kv_event_delay_s", kv_event_delay_s, 0.0))
        self.block_size = 16  # the router's, set by ``bind``
        if isinstance(index_blocks, bool) or not isinstance(index_blocks, int) or index_blocks < 0:
            raise ValueError(f"index_blocks must be a whole number >= 0; got {index_blocks!r}")
        self.index_blocks = index_blocks

    def bind(self, block_size: int) -> None:
        self.block_size = block_size

    #: ``choose`` reads the router's columns (``routing.types.Candidates``) when it gets them.
    reads_columns = True

    def costs(self, request: RequestInfo, backends: Sequence[BackendSnapshot]) -> list[float]:
        new_blocks = getattr(backends, "new_blocks", None)
        if new_blocks is not None:
            return self._column_costs(request, backends, new_blocks)
        bs = self.block_size
        n = request.input_len
        credit, scale, w = self.overlap_score_credit, self.prefill_load_scale, self.decode_active_request_weight
        precise = self.needs_precise_prefix
        out = []
        for b in backends:
            hit = b.precise_hit_tokens if precise else b.prefix_hit_tokens
            raw = (b.inflight_prefill_tokens + n) / bs
            adjusted = raw - credit * (hit / bs)
            if adjusted < 0.0:
                adjusted = 0.0
            out.append(scale * adjusted + (b.active_blocks + b.new_blocks) + w * b.inflight_requests)
        return out

    def _column_costs(self, request: RequestInfo, cols, new_blocks: list[int]) -> list[float]:
        """``costs`` from the router's columns: the same numbers, operation for operation."""
        bs = self.block_size
        n = request.input_len
        credit, scale, w = self.overlap_score_credit, self.prefill_load_scale, self.decode_active_request_weight
        hits = cols.precise_blocks if self.needs_precise_prefix else cols.hit_blocks
        if credit == 1 and scale == 1 and w == 0:
            return default_kv_costs(n, bs, cols.prefill_tokens, hits, cols.active_blocks, new_blocks)
        out = []
        for pf, hit, active, new, load in zip(cols.prefill_tokens, hits, cols.active_blocks, new_blocks,
                                             cols.loads):
            adjusted = (pf + n) / bs - credit * hit  # hit tokens / bs is exactly float(hit)
            if adjusted < 0.0:
                adjusted = 0.0
            out.append(scale * adjusted + (active + new) + w * load)
        return out

    def choose(self, request: RequestInfo, backends: Sequence[BackendSnapshot]) -> int:
        costs = self.costs(request, backends)
        if self.temperature > 0.0:
            return softmin_sample(costs, self.temperature, self.rng)
        return argmin(costs, self.rng)

