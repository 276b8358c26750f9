"""``Conversation``: what every text dataset is reduced to before tokenization."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

# Speaker names seen in ShareGPT dumps and chat datasets, mapped to chat roles.
ROLE_ALIASES = {
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "system": "system",
}


@dataclass
class Conversation:
    conversation_id: str
    roles: list[str]  # "user" | "assistant" | "system"
    texts: list[str]
    timestamps: list[float] = field(default_factory=list)  # per message, epoch s (NaN if none)
    timestamp: float = math.nan  # conversation-level, epoch s
    language: str | None = None
    toxic: bool | None = None
    redacted: bool | None = None

    def message_timestamp(self, m: int) -> float:
        if m < len(self.timestamps) and math.isfinite(self.timestamps[m]):
            return self.timestamps[m]
        return self.timestamp


def normalize_role(role: Any, where: str) -> str:
    r = ROLE_ALIASES.get(str(role).strip().lower())
    if r is None:
        raise ValueError(
            f"{where}: unknown speaker {role!r}; known speakers: {', '.join(sorted(ROLE_ALIASES))}"
        )
    return r


def to_epoch_seconds(value: Any) -> float:
    """Epoch seconds from a datetime, an ISO-8601 string or a number (s or ms); NaN if none.

    Naive datetimes are taken as UTC (WildChat's and Azure's timestamps are UTC).
    """
    if value is None:
        return math.nan
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.timestamp()
    if isinstance(value, bool):
        raise ValueError(f"not a timestamp: {value!r}")
    if isinstance(value, (int, float)):
        v = float(value)
        return v / 1000.0 if abs(v) > 1e11 else v  # > year 5138 in seconds: milliseconds
    if hasattr(value, "to_pydatetime"):  # pandas.Timestamp
        return to_epoch_seconds(value.to_pydatetime())
    if isinstance(value, str):
        s = value.strip()
        if not s:
            return math.nan
        try:
            return to_epoch_seconds(datetime.fromisoformat(s.replace("Z", "+00:00")))
        except ValueError as exc:
            raise ValueError(f"not an ISO-8601 timestamp: {value!r}") from exc
    raise ValueError(f"not a timestamp: {value!r}")
