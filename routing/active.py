"""A router's own count of the work it has in flight on one backend.

Dynamo's KV router prices a backend by the prompt work it still has to prefill
and the KV blocks its running sequences hold
(``lib/kv-router/src/scheduling``: ``active_prefill_tokens`` and
``potential_decode_blocks``); llm-d's token-load scorer counts uncached prompt
tokens in flight the same way (``inflight-load-producer``). ``ActiveWork`` keeps
both for one backend from the router's dispatches alone:

- ``prefill_tokens``: the uncached prompt tokens of requests whose first token
  has not come back (released at the first token, or at the end for a router
  that never sees it);
- ``blocks``: the distinct prompt blocks of requests in flight. Requests that
  share a prefix share its blocks, as the engine's cache does, so they are
  counted once: the router's backends share one ``InflightTree`` of the prompts
  in flight, which also finds the blocks a new request would add.
"""
from __future__ import annotations

from routing.inflight_tree import InflightTree


class ActiveWork:
    __slots__ = ("prefill_tokens", "_tree", "_index", "_private", "_requests")

    def __init__(self, tree: InflightTree | None = None, index: int = 0) -> None:
        #: The router's tree of prompts in flight (a tree of its own when used alone),
        #: where this backend is ``index``.
        self._tree = tree if tree is not None else InflightTree(index + 1)
        self._index = index
        self.prefill_tokens = 0
        self._private = 0
        #: request id -> [uncached tokens still counted, chain, shared head length]
        self._requests: dict[int, list] = {}

    @property
    def blocks(self) -> int:
        """Distinct KV blocks held by the prompts in flight."""
        return self._tree.blocks[self._index] + self._private

    def new_blocks(self, chain: list[int], shareable: int) -> int:
        """Blocks of a prompt not already held here (what dispatching it would add)."""
        n = len(chain)
        k = n if shareable < 0 else min(shareable, n)
        return n - self._tree.depth(self._index, chain, k)

    def add(self, request_id: int, chain: list[int], shareable: int, uncached_tokens: int) -> None:
        n = len(chain)
        k = n if shareable < 0 else min(shareable, n)
        self._tree.add(self._index, chain, k)
        self._private += n - k
        self.prefill_tokens += uncached_tokens
        self._requests[request_id] = [uncached_tokens, chain, k]

    def first_token(self, request_id: int) -> None:
        entry = self._requests.get(request_id)
        if entry is not None and entry[0]:
            self.prefill_tokens -= entry[0]
            entry[0] = 0

    def remove(self, request_id: int) -> None:
        entry = self._requests.pop(request_id, None)
        if entry is None:
            return
        uncached, chain, k = entry
        self.prefill_tokens -= uncached
        self._tree.remove(self._index, chain, k)
        self._private -= len(chain) - k
