"""Overrides: change keys of a parsed scenario before it is validated.

An override is a dotted key path and a value, e.g. ``{"arrivals.rate": 3.0}`` or
``{"cluster.groups.h100.count": [4, 8]}`` (a group by name, or by position:
``cluster.groups.0.count``). They are applied to the raw document, so the value
goes through exactly the checks a value in the file would; an error caused by an
override says so. ``parse_assignment`` reads the ``KEY=VALUE`` form command
lines use, with VALUE in TOML syntax (``rate=[2, 4]``, ``mode="exact"``; a bare
word is taken as a string).
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from scenarios.errors import ScenarioError
from scenarios.toml_compat import tomllib
from workload.tables import describe


def apply_overrides(
    doc: dict[str, Any], overrides: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    """A copy of ``doc`` with each override set (creating tables as needed).

    Also returns, for each override, the key path validation errors will use
    (groups by position: ``cluster.groups[1].count``) mapped to the override key.
    """
    out = copy.deepcopy(doc)
    origins: dict[str, str] = {}
    for key, value in overrides.items():
        parts = _split(key)
        node: Any = out
        canonical = ""
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list) and canonical == "cluster.groups":
                pos = _group_position(node, part, key)
                canonical += f"[{pos}]"
                if last:
                    node[pos] = copy.deepcopy(value)
                node = node[pos]
                continue
            if not isinstance(node, dict):
                raise ScenarioError(
                    key, f"override path goes through {canonical}, which is {describe(node)}, "
                    "not a table; override the whole value instead"
                )
            canonical = f"{canonical}.{part}" if canonical else part
            if last:
                node[part] = copy.deepcopy(value)
            else:
                node = node.setdefault(part, [] if canonical == "cluster.groups" else {})
        origins[canonical] = key
    return out, origins


def _split(key: Any) -> list[str]:
    if not isinstance(key, str) or not key or any(not p for p in key.split(".")):
        raise ScenarioError(str(key), "override key must be a dotted key path such as 'arrivals.rate'")
    return key.split(".")


def _group_position(groups: list[Any], part: str, key: str) -> int:
    """A ``[[cluster.groups]]`` entry by name, or else by position."""
    for i, g in enumerate(groups):
        if isinstance(g, dict) and g.get("name") == part:
            return i
    if part.isdigit() and int(part) < len(groups):
        return int(part)
    names = [g.get("name") for g in groups if isinstance(g, dict)]
    raise ScenarioError(
        key,
        f"no cluster group named {part!r}; groups: {', '.join(map(repr, names)) or '(none)'}"
        + (f" (or a position 0..{len(groups) - 1})" if groups else ""),
    )


def parse_assignment(text: str) -> tuple[str, Any]:
    """``"arrivals.rate=[2, 4]"`` -> ``("arrivals.rate", [2, 4])``; VALUE is TOML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ScenarioError(text, "expected KEY=VALUE, e.g. arrivals.rate=4 or router.mode=\"exact\"")
    raw = raw.strip()
    try:
        return key, tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        if raw and all(c.isalnum() or c in "-_./+" for c in raw):
            return key, raw  # a bare word: take it as a string
        raise ScenarioError(
            key, f'value {raw!r} is not a TOML value (quote strings: "text"; lists: [1, 2])'
        ) from None


def overridden(error_key: str, origins: Mapping[str, str]) -> str | None:
    """The override (key as given) responsible for an error at ``error_key``, if any."""
    for canonical, key in origins.items():
        if error_key == canonical or error_key.startswith((canonical + ".", canonical + "[")):
            return key
        if canonical.startswith((error_key + ".", error_key + "[")):  # e.g. a misspelt table
            return key
    return None
