"""Value checks for one key: type, range, enum, and grid lists.

Each TOML key has a ``Rule``; ``check`` returns the value normalised (ints to
floats where a number is expected) or raises ``ScenarioError`` naming the key
path, what was found and what is allowed. ``read_table`` applies the rules of a
whole table: unknown keys (with the closest allowed key suggested), missing
required keys, defaults taken from the schema dataclass.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from scenarios.errors import ScenarioError
from scenarios.schema import AXES

#: Marks a key without a default in the schema dataclass.
REQUIRED = object()


@dataclass(frozen=True)
class Rule:
    """How one key is checked. ``kind``: int, float, bool, str, str_list, int_list."""

    kind: str
    ge: float | None = None  # value >= ge
    gt: float | None = None  # value > gt
    choices: tuple[str, ...] = ()
    axis: bool = False  # may be a list of values (a grid axis)
    nonempty: bool = False  # strings: must not be empty

    def allowed(self) -> str:
        """What this rule accepts, in words, for error messages."""
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        noun = {
            "int": "an integer", "float": "a number", "bool": "true or false",
            "str": "a non-empty string" if self.nonempty else "a string",
            "str_list": "a list of strings", "int_list": "a list of integers",
        }[self.kind]
        if self.ge is not None:
            noun += f" >= {_fmt(self.ge)}"
        if self.gt is not None:
            noun += f" > {_fmt(self.gt)}"
        return noun


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def describe(value: Any) -> str:
    """A value as the user wrote it, with its TOML type."""
    kind = {
        bool: "boolean", int: "integer", float: "float", str: "string",
        list: "array", dict: "table",
    }.get(type(value), type(value).__name__)
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{kind} {text}"


def check(rule: Rule, value: Any, path: str) -> Any:
    """``value`` checked against ``rule``; a list of values for an axis given a list."""
    if isinstance(value, list) and rule.kind not in ("str_list", "int_list"):
        if not rule.axis:
            raise ScenarioError(
                path,
                f"got a list ({describe(value)}) but this key takes {rule.allowed()}; only "
                f"these keys may be lists (grid axes): {', '.join(AXES)}",
            )
        if not value:
            raise ScenarioError(
                path, f"an empty list gives no grid points; give {rule.allowed()} or a non-empty list of them"
            )
        items = [_check_scalar(rule, v, f"{path}[{i}]") for i, v in enumerate(value)]
        for i, v in enumerate(items):
            if v in items[:i]:
                raise ScenarioError(
                    f"{path}[{i}]", f"value {v!r} appears twice in the list; each grid value must be distinct"
                )
        return items
    return _check_scalar(rule, value, path)


def _check_scalar(rule: Rule, value: Any, path: str) -> Any:
    def bad(detail: str = "") -> ScenarioError:
        return ScenarioError(path, f"{detail or 'got ' + describe(value)}; expected {rule.allowed()}")

    kind = rule.kind
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad()
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise bad()
        if rule.choices and value not in rule.choices:
            close = difflib.get_close_matches(value, rule.choices, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise bad(f"unknown value {value!r}{hint}")
        if rule.nonempty and not value.strip():
            raise bad("got an empty string")
        return value
    if kind in ("str_list", "int_list"):
        item = str if kind == "str_list" else int
        if not isinstance(value, list) or any(
            not isinstance(v, item) or isinstance(v, bool) for v in value
        ):
            raise bad()
        return list(value)
    # numbers
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad()
    if kind == "int":
        if not isinstance(value, int):
            raise bad()
    else:
        if not math.isfinite(value):
            raise bad(f"got {value!r}")
        value = float(value)
    if (rule.ge is not None and value < rule.ge) or (rule.gt is not None and value <= rule.gt):
        raise bad(f"got {value!r}, out of range")
    return value


def reject_unknown(raw: Mapping[str, Any], allowed: list[str], path: str) -> None:
    """Fail on the first key of ``raw`` not in ``allowed``, suggesting the closest."""
    for key in raw:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ScenarioError(
                join(path, key), f"unknown key; {hint}allowed keys here: {', '.join(allowed)}"
            )


def require_table(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ScenarioError(
            path, f"got {describe(value)}; expected a table (e.g. [{path}] or {{ key = value }})"
        )
    return value


def read_table(
    raw: Mapping[str, Any], cls: type, rules: Mapping[str, Rule], path: str,
    extra: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Check every key of ``raw`` that ``rules`` covers; fill defaults from ``cls``.

    ``extra`` are keys the caller checks itself (nested tables); they are
    allowed but not returned.
    """
    reject_unknown(raw, list(rules) + list(extra), path)
    defaults = _defaults(cls)
    out: dict[str, Any] = {}
    for key, rule in rules.items():
        if key in raw:
            out[key] = check(rule, raw[key], join(path, key))
            continue
        default = defaults.get(key, REQUIRED)
        if default is REQUIRED:
            raise ScenarioError(join(path, key), f"missing required key; expected {rule.allowed()}")
        out[key] = default
    return out


def _defaults(cls: type) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        else:
            out[f.name] = REQUIRED
    return out


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key
