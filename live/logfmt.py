"""Log lines for the live servers: one event per line, ``key=value`` fields (logfmt).

``gateway_started url=http://127.0.0.1:8080 backends=2 strategy=least_load`` is easy
to read and to grep, and log shippers (Loki, Vector, Datadog) parse it into fields.
Servers log through the standard ``logging`` module (loggers ``live.gateway``,
``live.emulator``); ``setup`` is what their command lines call with ``--log-level``.
"""
from __future__ import annotations

import logging
import sys
import time

LEVELS = ("debug", "info", "warning", "error")


def _value(v: object) -> str:
    text = f"{v:.6g}" if isinstance(v, float) else str(v)
    if text == "" or any(c in text for c in ' "=\n\t'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def kv(event: str, **fields: object) -> str:
    """``event k1=v1 k2="v 2"`` (values with spaces or quotes are quoted)."""
    return " ".join([event, *(f"{k}={_value(v)}" for k, v in fields.items() if v is not None)])


class _Formatter(logging.Formatter):
    converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        stamp = self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z"
        line = f"{stamp} level={record.levelname.lower()} logger={record.name} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup(level: str = "info", stream=None) -> None:
    """Send the ``live`` loggers to stderr (or ``stream``) at ``level``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_Formatter())
    logger = logging.getLogger("live")
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False
