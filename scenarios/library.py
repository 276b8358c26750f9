"""The scenario files shipped inside this package (``scenarios/*.toml``).

They live in the package directory so ``python -m sim scenarios/burst.toml``
works from a checkout and an installed package still has them.
"""
from __future__ import annotations

from pathlib import Path

from scenarios.errors import ScenarioError

SCENARIO_DIR = Path(__file__).resolve().parent


def shipped_scenarios() -> dict[str, Path]:
    """Shipped scenario name (file stem) -> file path, sorted by name."""
    return {p.stem: p for p in sorted(SCENARIO_DIR.glob("*.toml"))}


def scenario_path(name_or_path: str | Path) -> Path:
    """An existing file path as given, else the shipped scenario of that name.

    ``"burst"``, ``"burst.toml"`` and ``"scenarios/burst.toml"`` all find the
    shipped file, so commands work from any directory.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = shipped_scenarios()
    stem = path.stem if path.suffix == ".toml" else path.name
    if stem in shipped and (len(path.parts) == 1 or path.parent.name == SCENARIO_DIR.name):
        return shipped[stem]
    raise ScenarioError(
        "", f"no such file, and no shipped scenario of that name; shipped: {', '.join(shipped)}",
        str(name_or_path),
    )
