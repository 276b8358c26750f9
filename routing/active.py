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
  share a prefix share its blocks, as the engine's cache does, so each hash is
  reference-counted. Every in-flight chain starts at its prompt's first block,
  so the set is prefix-closed and the blocks a new request would add are found
  by binary search.
"""
from __future__ import annotations

from routing.prefix_index import BlockOwners, longest_prefix_in


class ActiveWork:
    __slots__ = ("prefill_tokens", "_refs", "_private", "_requests", "_owners", "_bit")

    def __init__(self, owners: BlockOwners | None = None, bit: int = 0) -> None:
        self._owners = owners
        self._bit = bit
        self.prefill_tokens = 0
        self._refs: dict[int, int] = {}
        self._private = 0
        #: request id -> (uncached tokens still counted, shared hashes, private block count)
        self._requests: dict[int, list] = {}

    @property
    def blocks(self) -> int:
        """Distinct KV blocks held by the prompts in flight."""
        return len(self._refs) + self._private

    def new_blocks(self, chain: list[int], shareable: int) -> int:
        """Blocks of a prompt not already held here (what dispatching it would add)."""
        n = len(chain)
        k = n if shareable < 0 else min(shareable, n)
        return n - longest_prefix_in(self._refs, chain, k)

    def add(self, request_id: int, chain: list[int], shareable: int, uncached_tokens: int) -> None:
        n = len(chain)
        k = n if shareable < 0 else min(shareable, n)
        refs = self._refs
        head = chain[:k]
        owners, bit = self._owners, self._bit
        get = refs.get
        for h in head:
            c = get(h, 0)
            refs[h] = c + 1
            if not c and owners is not None:
                owners.set(h, bit)
        self._private += n - k
        self.prefill_tokens += uncached_tokens
        self._requests[request_id] = [uncached_tokens, head, n - k]

    def first_token(self, request_id: int) -> None:
        entry = self._requests.get(request_id)
        if entry is not None and entry[0]:
            self.prefill_tokens -= entry[0]
            entry[0] = 0

    def remove(self, request_id: int) -> None:
        entry = self._requests.pop(request_id, None)
        if entry is None:
            return
        uncached, head, private = entry
        self.prefill_tokens -= uncached
        refs = self._refs
        owners, bit = self._owners, self._bit
        for h in head:
            c = refs[h] - 1
            if c:
                refs[h] = c
            else:
                del refs[h]
                if owners is not None:
                    owners.clear(h, bit)
        self._private -= private
