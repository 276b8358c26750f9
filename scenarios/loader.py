"""Reading scenario files: TOML text -> overrides -> validated ``Scenario``.

Everything that can be wrong with a scenario is found here, before a trace is
built or a simulation starts (the simulator and live mode call only these).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scenarios.errors import ScenarioError
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
        if overrides:
            doc, origins = apply_overrides(doc, overrides)
        return build_scenario(doc, source_path=source_path, source_text=text)
    except ScenarioError as exc:
        culprit = overridden(exc.key, origins)
        problem = exc.problem
        if culprit is not None:
            problem += f" (set by override {culprit}={overrides[culprit]!r})"  # type: ignore[index]
        raise ScenarioError(exc.key, problem, source) from None
