"""What calibration needs to know about a running vLLM, read from its own endpoints.

Everything goes through the live client's session (``live.transport.client``): the served
model (``/v1/models``), its version (``/version``), and the KV cache geometry
vLLM exports in the ``vllm:cache_config_info`` gauge's labels (``num_gpu_blocks``,
``block_size``), which is where a fitted profile's ``num_kv_blocks`` comes from.
"""
from __future__ import annotations

import asyncio
import json
import math
from dataclasses import asdict, dataclass
from urllib.parse import urlparse

import aiohttp

from live.transport.client import list_models
from live.transport.prometheus import iter_samples


class BackendError(RuntimeError):
    """The backend URL is malformed, unreachable, or not a vLLM-compatible server."""


def check_url(url: str) -> str:
    """``url`` without a trailing slash; fails naming the URL unless it is http(s)://host[:port]."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise BackendError(f"bad backend URL {url!r}: expected http://HOST:PORT (e.g. http://127.0.0.1:8000)")
    try:
        parsed.port
    except ValueError:
        raise BackendError(f"bad backend URL {url!r}: the port is not a number in 0..65535") from None
    return url.rstrip("/")


@dataclass
class BackendInfo:
    url: str
    model: str
    version: str
    num_kv_blocks: int  # -1: not exported
    block_size: int  # -1: not exported
    kv_cache_tokens: int  # -1: not exported

    def to_dict(self) -> dict:
        return asdict(self)


async def _get_text(session: aiohttp.ClientSession, url: str, timeout_s: float) -> tuple[int, str]:
    async with asyncio.timeout(timeout_s):
        async with session.get(url) as resp:
            return resp.status, await resp.text()


def _int_label(labels: dict[str, str], key: str) -> int:
    try:
        v = float(labels.get(key, "nan"))
    except ValueError:
        return -1
    return int(v) if math.isfinite(v) else -1


async def probe_backend(session: aiohttp.ClientSession, url: str, timeout_s: float = 10.0) -> BackendInfo:
    """Read the served model, version and KV geometry; ``BackendError`` if unreachable."""
    url = check_url(url)
    try:
        models = await list_models(session, url, timeout_s=timeout_s)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise BackendError(
            f"backend {url} is unreachable or not OpenAI-compatible (GET /v1/models failed: "
            f"{type(exc).__name__}: {exc}); start one with `python -m calibrate serve`"
        ) from exc
    if not models:
        raise BackendError(f"backend {url} serves no model (GET /v1/models listed none)")
    version = "unknown"
    try:
        status, text = await _get_text(session, url + "/version", timeout_s)
        if status == 200:
            version = str(json.loads(text).get("version", "unknown"))
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
        pass
    blocks = block_size = tokens = -1
    try:
        status, text = await _get_text(session, url + "/metrics", timeout_s)
        if status == 200:
            for name, labels, _ in iter_samples(text):
                if name == "vllm:cache_config_info":
                    blocks = _int_label(labels, "num_gpu_blocks")
                    block_size = _int_label(labels, "block_size")
                    tokens = _int_label(labels, "kv_cache_size_tokens")
                    break
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
        pass
    return BackendInfo(url, models[0], version, blocks, block_size, tokens)
