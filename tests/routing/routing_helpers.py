"""Shared by the routing tests: snapshot builders, the heuristic names, chained prompts."""
from __future__ import annotations

import math

from routing import BackendSnapshot, RequestInfo

#: The built-in heuristics; each builds with no parameters.
HEURISTICS = ["least_kv", "least_load", "least_tokens", "power_of_two", "random", "round_robin"]


def snaps(inflight=None, tokens=None, kv=None, n=None) -> list[BackendSnapshot]:
    """Snapshots with the given per-backend in-flight requests, tokens and KV usage."""
    n = n or len(inflight or tokens or kv)
    out = []
    for i in range(n):
        s = BackendSnapshot(index=i, name=f"b{i}")
        s.inflight_requests = inflight[i] if inflight else 0
        s.inflight_tokens = tokens[i] if tokens else 0
        s.kv_usage = kv[i] if kv else math.nan
        out.append(s)
    return out


def req(i: int = 0, input_len: int = 100) -> RequestInfo:
    return RequestInfo(request_id=i, input_len=input_len, arrival_s=float(i))


def tree_chain(path: list[int]) -> list[int]:
    """A chain in a small prompt tree: block i's hash names the whole path to it, so two
    chains agree at a block exactly when they agree on everything before it."""
    return [hash(tuple(path[: i + 1])) & (2**63 - 1) for i in range(len(path))]
