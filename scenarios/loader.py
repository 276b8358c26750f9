"""Reading scenario files: TOML text -> base scenario -> overrides -> validated ``Scenario``.

Everything that can be wrong with a scenario is found here, before a trace is
built or a simulation starts (the simulator and live mode call only these).

A file may start from another scenario with ``extends = "burst"`` (a shipped
scenario's name, or a path relative to the file): its own keys then override the
base's, tables merged key by key, any other value (arrays included, so
``router.strategies`` and ``[[cluster.groups]]``) replaced whole. A study that
changes a few keys of a shipped scenario says only those, and cannot drift from it.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scenarios.errors import ScenarioError
from scenarios.library import scenario_path
from scenarios.overrides import apply_overrides, overridden
from scenarios.schema import Scenario
from scenarios.toml_compat import tomllib
from scenarios.validate import build_scenario


def load_scenario(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Scenario:
    """Load and validate a scenario file; ``overrides`` set dotted keys first.

    ``overrides`` look like ``{"arrivals.rate": 3.0, "seeds": [1]}``; their key
    paths and values are validated like the file's own.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError(
            "", "scenario file not found (`python -m scenarios list` shows the shipped ones)", str(path)
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError("", f"cannot read the scenario file: {exc}", str(path)) from None
    return parse_scenario(text, source=str(path), overrides=overrides, source_path=path)


def parse_scenario(
    text: str,
    source: str = "<string>",
    overrides: Mapping[str, Any] | None = None,
    *,
    source_path: Path | None = None,
) -> Scenario:
    """Validate scenario TOML ``text``; ``source`` names it in error messages."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError("", f"invalid TOML: {exc}", source) from None
    origins: dict[str, str] = {}
    try:
        doc = resolve_extends(doc, source_path, [str(source_path.resolve())] if source_path else [])
        if overrides:
            doc, origins = apply_overrides(doc, overrides)
        return build_scenario(doc, source_path=source_path, source_text=text)
    except ScenarioError as exc:
        culprit = overridden(exc.key, origins)
        problem = exc.problem
        if culprit is not None:
            problem += f" (set by override {culprit}={overrides[culprit]!r})"  # type: ignore[index]
        raise ScenarioError(exc.key, problem, source) from None


def resolve_extends(doc: dict[str, Any], source_path: Path | None, chain: list[str]) -> dict[str, Any]:
    """``doc`` merged over the scenario its ``extends`` key names (recursively); without it, ``doc``."""
    if "extends" not in doc:
        return doc
    base_name = doc["extends"]
    if not isinstance(base_name, str) or not base_name:
        raise ScenarioError("extends", f"got {base_name!r}; expected the name of a shipped scenario or "
                                       "a path to a scenario file")
    relative = (source_path.parent / base_name) if source_path is not None else None
    try:
        base_path = relative if relative is not None and relative.is_file() else scenario_path(base_name)
    except ScenarioError as exc:
        raise ScenarioError("extends", f"{base_name!r}: {exc.problem}") from None
    if str(base_path.resolve()) in chain:
        raise ScenarioError("extends", f"{base_name!r} extends, directly or not, this file: "
                                       + " -> ".join([*chain, str(base_path)]))
    try:
        base = tomllib.loads(base_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError("extends", f"cannot read the base scenario {base_path}: {exc}") from None
    base = resolve_extends(base, base_path, [*chain, str(base_path.resolve())])
    own = {k: v for k, v in doc.items() if k != "extends"}
    return _merge(base, own)


def _merge(base: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in own.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
