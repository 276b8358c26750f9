"""Typed TOML tables: a dataclass whose fields carry their own rules, and the checker.

A table is a frozen dataclass; each field is declared with ``key(...)``, which
holds the default and the ``Rule`` its values must follow, so adding a key to a
table is one line. ``read_table`` checks a raw mapping against such a class:
unknown keys (with the closest allowed key suggested), missing required keys,
type, range, enum (with a did-you-mean), and, where the caller allows grids, a
list of values on keys marked ``axis``. Every error is a ``SchemaError`` naming
the key path (``workload.synthetic.input.max``), what was found and what is
allowed.

``workload`` declares ``[workload]`` and ``[arrivals]`` with it; ``scenarios``
declares its own tables (``[[cluster.groups]]``, ``[router]``, ...) with it, so
both report errors the same way.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class SchemaError(ValueError):
    """A table holds a bad key or value: ``key`` is the dotted path, ``problem`` says why."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}" if key else problem)

    def __reduce__(self):  # picklable across processes
        return (type(self), (self.key, self.problem))


#: Marks a key without a default.
REQUIRED: Any = dataclasses.MISSING


@dataclass(frozen=True)
class Rule:
    """How one key is checked. ``kind``: int, float, bool, str, str_list, int_list, table."""

    kind: str
    ge: float | None = None  # value >= ge
    gt: float | None = None  # value > gt
    choices: tuple[str, ...] = ()
    axis: bool = False  # a scenario may give a list of values (a grid axis)
    nonempty: bool = False  # strings: must not be empty
    allow_inf: bool = False  # floats: +inf is a value (e.g. burstiness: a constant rate)

    def allowed(self) -> str:
        """What this rule accepts, in words, for error messages."""
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        noun = {
            "int": "an integer", "float": "a number", "bool": "true or false",
            "str": "a non-empty string" if self.nonempty else "a string",
            "str_list": "a list of strings", "int_list": "a list of integers", "table": "a table",
        }[self.kind]
        if self.ge is not None:
            noun += f" >= {_fmt(self.ge)}"
        if self.gt is not None:
            noun += f" > {_fmt(self.gt)}"
        if self.allow_inf:
            noun += " (inf allowed)"
        return noun


def key(default: Any = REQUIRED, kind: str = "", *, factory: Any = None, **rule: Any) -> Any:
    """A table field: its default (or ``factory``) and its rule, e.g. ``key(16, "int", ge=1)``.

    ``kind="table"`` marks a nested table checked by its owner (no rule applied here).
    """
    metadata = {"rule": Rule(kind or _kind_of(default), **rule)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _kind_of(default: Any) -> str:
    for kind, types in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if isinstance(default, types):
            return kind
    raise TypeError(f"give the kind of a key whose default is {default!r}")


def rules(cls: type) -> dict[str, Rule]:
    """Each field of table class ``cls`` with its rule, in declaration order."""
    return {f.name: f.metadata["rule"] for f in dataclasses.fields(cls) if "rule" in f.metadata}


def defaults(cls: type) -> dict[str, Any]:
    """Each field's default (``REQUIRED`` where it has none)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        else:
            out[f.name] = REQUIRED
    return out


def axes(cls: type) -> tuple[str, ...]:
    """The keys of ``cls`` that may be grid axes."""
    return tuple(name for name, rule in rules(cls).items() if rule.axis)


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


def check(rule: Rule, value: Any, path: str, *, grid: bool = False, lists_note: str = "") -> Any:
    """``value`` checked against ``rule``: normalised (ints to floats where a number is expected).

    With ``grid``, a key marked ``axis`` may hold a non-empty list of distinct
    values, each checked; ``lists_note`` says which keys may (for the error).
    """
    if isinstance(value, list) and rule.kind not in ("str_list", "int_list"):
        if not (grid and rule.axis):
            note = lists_note or "it takes one value"
            raise SchemaError(path, f"got a list ({describe(value)}) but this key takes "
                                    f"{rule.allowed()}; {note}")
        if not value:
            raise SchemaError(
                path, f"an empty list gives no grid points; give {rule.allowed()} or a non-empty list of them"
            )
        items = [_check_scalar(rule, v, f"{path}[{i}]") for i, v in enumerate(value)]
        for i, v in enumerate(items):
            if v in items[:i]:
                raise SchemaError(
                    f"{path}[{i}]", f"value {v!r} appears twice in the list; each grid value must be distinct"
                )
        return items
    return _check_scalar(rule, value, path)


def _check_scalar(rule: Rule, value: Any, path: str) -> Any:
    def bad(detail: str = "") -> SchemaError:
        return SchemaError(path, f"{detail or 'got ' + describe(value)}; expected {rule.allowed()}")

    kind = rule.kind
    if kind == "table":
        return require_table(value, path)
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
        if not isinstance(value, (list, tuple)) or any(
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
        if math.isnan(value) or (math.isinf(value) and not (rule.allow_inf and value > 0)):
            raise bad(f"got {value!r}")
        value = float(value)
    if (rule.ge is not None and value < rule.ge) or (rule.gt is not None and value <= rule.gt):
        raise bad(f"got {value!r}, out of range")
    return value


def reject_unknown(raw: Mapping[str, Any], allowed: list[str], path: str) -> None:
    """Fail on the first key of ``raw`` not in ``allowed``, suggesting the closest."""
    for name in raw:
        if name not in allowed:
            close = difflib.get_close_matches(str(name), allowed, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise SchemaError(
                join(path, str(name)), f"unknown key; {hint}allowed keys here: {', '.join(allowed)}"
            )


def require_table(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise SchemaError(
            path, f"got {describe(value)}; expected a table (e.g. [{path}] or {{ key = value }})"
        )
    return dict(value)


def read_table(
    raw: Any, cls: type, path: str, *, grid: bool = False, lists_note: str = "",
    skip: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Check every key of ``raw`` against the rules of ``cls``; fill in the defaults.

    Nested tables (``kind="table"``) come back as given (checked to be tables);
    their owner checks their keys. Keys in ``skip`` are allowed but neither
    checked nor returned (the caller reads them).
    """
    raw = require_table(raw, path)
    table_rules = {name: rule for name, rule in rules(cls).items() if name not in skip}
    reject_unknown(raw, [*table_rules, *skip], path)
    table_defaults = defaults(cls)
    out: dict[str, Any] = {}
    for name, rule in table_rules.items():
        if name in raw:
            out[name] = check(rule, raw[name], join(path, name), grid=grid, lists_note=lists_note)
            continue
        default = table_defaults.get(name, REQUIRED)
        if default is REQUIRED:
            raise SchemaError(join(path, name), f"missing required key; expected {rule.allowed()}")
        out[name] = default
    return out


def join(path: str, name: str | int) -> str:
    if isinstance(name, int):
        return f"{path}[{name}]"
    return f"{path}.{name}" if path else name


def values(value: Any) -> list[Any]:
    """A grid axis' values, or a scalar as a one-element list."""
    return value if isinstance(value, list) else [value]
