"""Is the HuggingFace Hub usable right now? Answered in seconds, not minutes.

``transformers`` and ``datasets`` retry an unreachable Hub for about a minute
before failing. On machines without network that turns a typo into a long hang,
so loaders ask here first and fail fast with advice instead.
"""
from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
PROBE_TIMEOUT_S = 3.0


def offline_flag() -> str | None:
    """The name of the offline-mode environment variable that is set, if any."""
    for var in OFFLINE_VARS:
        if os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return var
    return None


def _target() -> tuple[str, int]:
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlparse(proxy or os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    return url.hostname or "huggingface.co", port


def hub_unavailable_reason(timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """``None`` if the Hub (or the HTTPS proxy) accepts a TCP connection, else why not."""
    flag = offline_flag()
    if flag:
        return f"offline mode is on ({flag}={os.environ[flag]})"
    host, port = _target()
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as exc:
        return f"cannot connect to {host}:{port} within {timeout_s:g} s ({exc})"
