"""What identifies a run of a scenario, shared by the simulator and live mode.

Both write run directories from a scenario: the same command-line overrides, the
same digest (two runs are the same experiment exactly when their resolved
scenarios are equal, whatever the file bytes), the same experiment ids, and the
same scenario part of ``manifest.json``; each mode adds its own section.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any

from scenarios.errors import ScenarioError
from scenarios.grid import expand_grid
from scenarios.library import scenario_path
from scenarios.loader import load_scenario
from scenarios.overrides import parse_assignment

#: Bump when the manifest's meaning changes.
MANIFEST_VERSION = 1


def load_for_run(name_or_path: str, assignments: Sequence[str] = (), seeds: str | None = None,
                 extra: dict[str, Any] | None = None):
    """Load a scenario (a path or a shipped name) with ``--set K=V`` and ``--seeds 0,1``.

    Returns the scenario and its grid points; raises ``ScenarioError`` on any bad input.
    """
    overrides: dict[str, Any] = {}
    for item in assignments:
        key, value = parse_assignment(item)
        overrides[key] = value
    if seeds:
        try:
            overrides["seeds"] = [int(s) for s in seeds.replace(" ", "").split(",") if s]
        except ValueError:
            raise ScenarioError("seeds", f"--seeds takes comma-separated integers, got {seeds!r}") from None
    overrides.update(extra or {})
    scenario = load_scenario(scenario_path(name_or_path), overrides or None)
    return scenario, expand_grid(scenario)


def resolved_scenario(scenario) -> dict[str, Any]:
    """The resolved scenario as JSON values: what the digest hashes and the manifest keeps."""
    resolved = {k: v for k, v in asdict(scenario).items() if k not in ("source_path", "source_text")}
    return json.loads(json.dumps(resolved, sort_keys=True, default=str))


def scenario_digest(scenario) -> str:
    """SHA-256 of the resolved scenario (not of the file's bytes)."""
    text = json.dumps(resolved_scenario(scenario), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def scenario_changes(before: Any, after: Any, path: str = "") -> list[str]:
    """What differs between two resolved scenarios, one ``key: old -> new`` per change.

    Keys are written as ``--set`` takes them (``cluster.groups.<name>.count``), so a
    refused ``--resume`` can say exactly which setting changed.
    """
    if isinstance(before, dict) and isinstance(after, dict):
        out = []
        for key in sorted(set(before) | set(after), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in before:
                out.append(f"{sub}: (absent) -> {after[key]!r}")
            elif key not in after:
                out.append(f"{sub}: {before[key]!r} -> (absent)")
            else:
                out += scenario_changes(before[key], after[key], sub)
        return out
    if (isinstance(before, list) and isinstance(after, list) and len(before) == len(after)
            and before and all(isinstance(x, dict) and "name" in x for x in before + after)
            and [x["name"] for x in before] == [x["name"] for x in after]):
        return [c for b, a in zip(before, after) for c in scenario_changes(b, a, f"{path}.{b['name']}")]
    return [] if before == after else [f"{path}: {before!r} -> {after!r}"]


def resume_refusal(manifest: dict[str, Any], scenario, path: Any) -> str:
    """The message for a ``--resume`` whose scenario differs from the run's, naming the keys."""
    text = (f"cannot resume {path}: the scenario (with --set/--seeds/--mode) differs from the "
            "one that run started with")
    stored = manifest.get("resolved_scenario")
    if isinstance(stored, dict):
        changes = scenario_changes(stored, resolved_scenario(scenario))
        if changes:
            shown = changes[:8] + ([f"... and {len(changes) - 8} more"] if len(changes) > 8 else [])
            text += ":\n  " + "\n  ".join(shown) + "\n"
    return text + ("give the run's original scenario and options to continue it, or start a new "
                   "run (drop --resume)")


def new_experiment_id(scenario, digest: str, tag: str = "", now: datetime | None = None) -> str:
    """``<name>[-<tag>]-<UTC time>-<digest[:6]>``."""
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%d-%H%M%S")
    middle = f"-{tag}" if tag else ""
    return f"{scenario.name}{middle}-{stamp}-{digest[:6]}"


def base_manifest(scenario, points, experiment_id: str, digest: str, mode: str) -> dict[str, Any]:
    """The scenario part of ``manifest.json`` (``results.rundir`` documents the keys)."""
    return {
        "manifest_version": MANIFEST_VERSION,
        "experiment_id": experiment_id,
        "mode": mode,
        "scenario": scenario.name,
        "description": scenario.description,
        "scenario_path": str(scenario.source_path) if scenario.source_path else None,
        "scenario_sha256": digest,
        "resolved_scenario": resolved_scenario(scenario),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seeds": list(scenario.seeds),
        "strategies": [{"label": s.label, "name": s.name, "params": dict(s.params)}
                       for s in scenario.router.strategies],
        "points": [p.describe() for p in points],
        "slo": {k: v for k, v in asdict(scenario.slo).items() if v is not None},
        "duration_s": scenario.duration_s,
        "num_requests": scenario.num_requests,
    }
