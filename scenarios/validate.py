"""From a parsed TOML document (a dict) to a validated ``Scenario``.

``[workload]`` and ``[arrivals]`` are checked by ``workload`` itself (with grid
axes allowed); the scenario's own tables by the rules declared on their fields
(``scenarios.schema``). Checks that span tables (replay needs timestamps, block
sizes must agree) come last, so each table's own errors are reported with their
own key paths first.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import routing
from scenarios.errors import ScenarioError
from scenarios.schema import (
    AXES, DERIVED_PROFILE_KEYS, ArrivalSpec, ClusterSpec, GroupSpec, RouterSpec, Scenario, SloSpec,
    StrategySpec, WorkloadSpec,
)
from workload.config import check_pair
from workload.tables import (
    SchemaError, check, describe, join, read_table, reject_unknown, require_table, rules,
)

#: Names that end up in backend names, axis paths and run-directory folders.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_+-]*$")
_SAFE_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
SECTIONS = ("workload", "arrivals", "cluster", "router", "slo")
#: Said when a list is given where no grid axis is allowed.
LISTS_NOTE = "only these keys may be lists (grid axes): " + ", ".join(AXES)


def build_scenario(
    doc: dict[str, Any], source_path: Path | None = None, source_text: str = ""
) -> Scenario:
    """Validate a parsed document. Raises ``ScenarioError`` (without the file name)."""
    try:
        return _build(doc, source_path, source_text)
    except ScenarioError:
        raise
    except SchemaError as exc:
        raise ScenarioError(exc.key, exc.problem) from None


def _build(doc: dict[str, Any], source_path: Path | None, source_text: str) -> Scenario:
    own = [k for k in rules(Scenario) if k not in SECTIONS]
    reject_unknown(doc, [*own, *SECTIONS], "")
    top = read_table(doc, Scenario, "", skip=("name", *SECTIONS), lists_note=LISTS_NOTE)
    for section in ("workload", "cluster", "router"):
        if section not in doc:
            raise ScenarioError(section, f"missing required table [{section}]")
    if "name" in doc:
        name = check(rules(Scenario)["name"], doc["name"], "name", lists_note=LISTS_NOTE)
    else:  # a file's name stands in for it
        name = source_path.stem if source_path else ""
    if not name:
        raise ScenarioError("name", "missing required key; expected a non-empty string")
    if not _SAFE_NAME.match(name):
        raise ScenarioError(
            "name", f"got {name!r}; expected letters, digits, '_', '+' or '-' (it names run folders)"
        )
    _check_seeds(top["seeds"])
    if top["duration_s"] is None and top["num_requests"] is None:
        raise ScenarioError(
            "num_requests", "give num_requests (how many requests) or duration_s (seconds of "
            "arrivals), or both; neither is set",
        )
    workload = WorkloadSpec.from_mapping(doc["workload"], grid=True, lists_note=LISTS_NOTE)
    arrivals = ArrivalSpec.from_mapping(doc.get("arrivals", {}), grid=True, lists_note=LISTS_NOTE)
    cluster = _cluster(require_table(doc["cluster"], "cluster"))
    router = _router(require_table(doc["router"], "router"))
    slo = SloSpec(**read_table(doc.get("slo", {}), SloSpec, "slo", lists_note=LISTS_NOTE))
    scenario = Scenario(
        name=name, description=top["description"], seeds=top["seeds"],
        duration_s=top["duration_s"], num_requests=top["num_requests"],
        drain_s=top["drain_s"], workload=workload, arrivals=arrivals,
        cluster=cluster, router=router, slo=slo, source_text=source_text, source_path=source_path,
    )
    _cross_checks(scenario)
    return scenario


def _check_seeds(seeds: list[int]) -> None:
    if not seeds:
        raise ScenarioError(
            "seeds", "empty list; expected at least one integer seed, e.g. seeds = [0, 1, 2]"
        )
    for i, s in enumerate(seeds):
        if s < 0:
            raise ScenarioError(f"seeds[{i}]", f"got {s}; seeds must be integers >= 0")
        if s in seeds[:i]:
            raise ScenarioError(f"seeds[{i}]", f"seed {s} appears twice; seeds must be distinct")


def _cluster(raw: dict[str, Any]) -> ClusterSpec:
    reject_unknown(raw, ["groups"], "cluster")
    groups_raw = raw.get("groups")
    if not isinstance(groups_raw, list) or not groups_raw:
        raise ScenarioError(
            "cluster.groups",
            "expected at least one [[cluster.groups]] table, e.g. "
            '[[cluster.groups]] name = "h100" count = 4 profile = "h100-llama2-70b-tp4"'
            + ("" if groups_raw is None else f"; got {describe(groups_raw)}"),
        )
    groups: list[GroupSpec] = []
    for i, g in enumerate(groups_raw):
        path = f"cluster.groups[{i}]"
        values = read_table(g, GroupSpec, path, grid=True, lists_note=LISTS_NOTE, skip=("profile",))
        values["profile"] = _group_profile(g, join(path, "profile"))
        if not _SAFE_NAME.match(values["name"]):
            raise ScenarioError(
                join(path, "name"),
                f"got {values['name']!r}; expected letters, digits, '_', '+' or '-' (it names "
                "backends and grid axes)",
            )
        for j, other in enumerate(groups):
            if other.name == values["name"]:
                raise ScenarioError(
                    join(path, "name"),
                    f"{values['name']!r} is already the name of cluster.groups[{j}]; group names "
                    "must be unique",
                )
        groups.append(GroupSpec(**values))
    return ClusterSpec(groups=groups)


_PROFILE_WORDS = ('a profile name (python -m sim --list-profiles), a profile .json path, or a derived '
                  'profile { model = "llama-3.1-8b", gpu = "l40s", tp = 1, dtype = "bf16" }')


def _group_profile(group: dict[str, Any], path: str) -> Any:
    """A group's ``profile``: a name or path, a derived-profile table, or a grid list of them."""
    if "profile" not in group:
        raise ScenarioError(path, f"missing required key; expected {_PROFILE_WORDS}")
    value = group["profile"]
    if isinstance(value, list):
        if not value:
            raise ScenarioError(path, f"an empty list gives no grid points; give {_PROFILE_WORDS}")
        items = [_one_profile(v, f"{path}[{i}]") for i, v in enumerate(value)]
        for i, v in enumerate(items):
            if v in items[:i]:
                raise ScenarioError(f"{path}[{i}]", "this profile appears twice in the list; each grid "
                                                    "value must be distinct")
        return items
    return _one_profile(value, path)


def _one_profile(value: Any, path: str) -> Any:
    if isinstance(value, str):
        if not value.strip():
            raise ScenarioError(path, f"got an empty string; expected {_PROFILE_WORDS}")
        return value
    if not isinstance(value, dict):
        raise ScenarioError(path, f"got {describe(value)}; expected {_PROFILE_WORDS}")
    reject_unknown(value, list(DERIVED_PROFILE_KEYS), path)
    for name in ("model", "gpu"):
        if name not in value:
            raise ScenarioError(join(path, name), f"missing required key of a derived profile; allowed keys: "
                                                  f"{', '.join(DERIVED_PROFILE_KEYS)}")
    for name, v in value.items():
        want = DERIVED_PROFILE_KEYS[name]
        ok = (isinstance(v, str) and bool(v.strip())) if want is str else (
            isinstance(v, (int, float)) and not isinstance(v, bool) and (want is float or isinstance(v, int)))
        if not ok:
            noun = {str: "a non-empty string", int: "an integer", float: "a number"}[want]
            raise ScenarioError(join(path, name), f"got {describe(v)}; expected {noun}")
    return dict(value)


def _router(raw: dict[str, Any]) -> RouterSpec:
    values = read_table(raw, RouterSpec, "router", grid=True, lists_note=LISTS_NOTE,
                        skip=("strategies",))
    if "strategies" not in raw:
        raise ScenarioError(
            "router.strategies",
            f"missing required key; expected a list of strategy names or tables, e.g. "
            f'["round_robin", {{ name = "least_load" }}]; available: {", ".join(routing.available())}',
        )
    entries = raw["strategies"]
    if not isinstance(entries, list) or not entries:
        raise ScenarioError(
            "router.strategies",
            f"got {describe(entries)}; expected a non-empty list of strategy names or tables",
        )
    strategies: list[StrategySpec] = []
    for i, entry in enumerate(entries):
        spec = strategy(entry, f"router.strategies[{i}]")
        for j, other in enumerate(strategies):
            if other.label == spec.label:
                raise ScenarioError(
                    f"router.strategies[{i}]",
                    f"label {spec.label!r} is already used by router.strategies[{j}]; labels must be "
                    'unique (add label = "..." to tell two entries of the same strategy apart)',
                )
        strategies.append(spec)
    return RouterSpec(strategies=strategies, **values)


def strategy(entry: Any, path: str) -> StrategySpec:
    """One ``router.strategies`` entry: a name, or ``{name, label?, <params>}``."""
    if isinstance(entry, str):
        table: dict[str, Any] = {"name": entry}
        name_path = path
    elif isinstance(entry, dict):
        table = entry
        name_path = join(path, "name")
    else:
        raise ScenarioError(
            path,
            f"got {describe(entry)}; expected a strategy name or a table "
            '{ name = "...", label = "...", <parameters> }',
        )
    available = routing.available()
    if "name" not in table:
        raise ScenarioError(name_path, f"missing required key; expected one of {', '.join(available)}")
    name = table["name"]
    if not isinstance(name, str) or name not in available:
        shown = repr(name) if isinstance(name, str) else describe(name)
        raise ScenarioError(name_path, f"unknown strategy {shown}; available: {', '.join(available)}")
    label = table.get("label", name)
    if not isinstance(label, str) or not _SAFE_LABEL.match(label):
        raise ScenarioError(
            join(path, "label"),
            f"got {describe(label)}; expected letters, digits, '.', '_', '+' or '-' (it names run folders)",
        )
    params = {k: v for k, v in table.items() if k not in ("name", "label")}
    allowed = routing.parameters(name)
    for key, value in params.items():
        if key not in allowed:
            shown = ", ".join(sorted(allowed)) or "(none)"
            raise ScenarioError(
                join(path, key), f"strategy {name!r} has no parameter {key!r}; its parameters: {shown}"
            )
        _check_param_type(name, key, value, allowed[key], join(path, key))
    try:  # the registry's own check, in case it grows beyond names
        routing.validate(name, params)
    except ValueError as exc:
        raise ScenarioError(path, str(exc)) from None
    return StrategySpec(name=name, label=label, params=params)


def _check_param_type(name: str, key: str, value: Any, default: Any, path: str) -> None:
    """A parameter must have its default's type (an int may stand for a float)."""
    if default is None:
        return
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, (int, float)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ScenarioError(
            path, f"got {describe(value)}; strategy {name!r} expects a value like its default {default!r}"
        )


def _cross_checks(sc: Scenario) -> None:
    check_pair(sc.workload, sc.arrivals)
    for i, g in enumerate(sc.cluster.groups):
        if g.block_size != sc.workload.block_size:
            raise ScenarioError(
                f"cluster.groups[{i}].block_size",
                f"{g.block_size} differs from workload.block_size = {sc.workload.block_size}; "
                "prompts are hashed per KV block, so both must be equal",
            )
