"""From a parsed TOML document (a dict) to a validated ``Scenario``.

One function per table, each with its key rules next to it. Checks that span
tables (replay needs timestamps, block sizes must agree) come last, so each
table's own errors are reported with their own key paths first.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import routing
from scenarios.checks import Rule, check, describe, join, read_table, reject_unknown, require_table
from scenarios.errors import ScenarioError
from scenarios.schema import (
    DISTRIBUTIONS, GROUP_AXES, MODES, ORDERS, PATTERNS, REPLAY_SOURCES, SECTION_AXES, SOURCES,
    ArrivalSpec, ClusterSpec, GroupSpec, RouterSpec, Scenario, SloSpec, StrategySpec,
    SyntheticSpec, WorkloadSpec,
)

#: Names that end up in backend names, axis paths and run-directory folders.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_+-]*$")
_SAFE_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")

_INT_GE0 = Rule("int", ge=0)
_INT_GE1 = Rule("int", ge=1)
_POS = Rule("float", gt=0)
_NONNEG = Rule("float", ge=0)

TOP_RULES = {
    "name": Rule("str", nonempty=True),
    "description": Rule("str"),
    "seeds": Rule("int_list"),
    "duration_s": Rule("float", gt=0),
    "num_requests": Rule("int", ge=1),
    "drain_s": _NONNEG,
}
SECTIONS = ("workload", "arrivals", "cluster", "router", "slo")

WORKLOAD_RULES = {
    "source": Rule("str", choices=SOURCES),
    "path": Rule("str"),
    "dataset": Rule("str", nonempty=True),
    "split": Rule("str", nonempty=True),
    "tokenizer": Rule("str", nonempty=True),
    "block_size": _INT_GE1,
    "languages": Rule("str_list"),
    "exclude_toxic": Rule("bool"),
    "exclude_redacted": Rule("bool"),
    "max_turns": _INT_GE0,
    "min_input_len": _INT_GE1,
    "max_input_len": Rule("int", ge=0, axis=True),
    "min_output_len": _INT_GE1,
    "max_output_len": Rule("int", ge=0, axis=True),
    "max_conversations": _INT_GE0,
    "order": Rule("str", choices=ORDERS),
    "active_sessions": _INT_GE1,
}
SYNTHETIC_RULES = {
    "prefix_groups": _INT_GE0,
    "prefix_len": _INT_GE0,
    "num_requests": _INT_GE1,
}
#: Keys of each distribution table: required, optional.
DIST_KEYS = {
    "fixed": (("value",), ()),
    "uniform": (("min", "max"), ()),
    "lognormal": (("mean", "sigma"), ("min", "max")),
}
DIST_RULES = {
    "value": _INT_GE1, "min": _INT_GE1, "max": _INT_GE1, "mean": _POS, "sigma": _POS,
}
ARRIVAL_RULES = {
    "pattern": Rule("str", choices=PATTERNS, axis=True),
    "rate": Rule("float", gt=0, axis=True),
    "burstiness": Rule("float", gt=0, axis=True),
    "base_rate": _NONNEG,
    "peak_rate": Rule("float", gt=0, axis=True),
    "on_s": _POS,
    "off_s": _NONNEG,
    "time_scale": Rule("float", gt=0, axis=True),
    "target_rate": Rule("float", ge=0, axis=True),
}
GROUP_RULES = {
    "name": Rule("str", nonempty=True),
    "profile": Rule("str", nonempty=True, axis=True),
    "count": Rule("int", ge=1, axis=True),
    "max_num_seqs": Rule("int", ge=0, axis=True),
    "max_num_batched_tokens": Rule("int", ge=0, axis=True),
    "num_kv_blocks": Rule("int", ge=0, axis=True),
    "block_size": _INT_GE1,
    "enable_prefix_caching": Rule("bool", axis=True),
}
ROUTER_RULES = {
    "scrape_interval_s": Rule("float", gt=0, axis=True),
    "network_delay_s": _NONNEG,
    "timeout_s": _NONNEG,
    "mode": Rule("str", choices=MODES),
}
SLO_RULES = {key: Rule("float", gt=0) for key in ("ttft_ms", "tpot_ms", "e2el_ms")}

assert all(WORKLOAD_RULES[k].axis for k in SECTION_AXES["workload"])
assert all(ARRIVAL_RULES[k].axis for k in SECTION_AXES["arrivals"])
assert all(GROUP_RULES[k].axis for k in GROUP_AXES)


def build_scenario(
    doc: dict[str, Any], source_path: Path | None = None, source_text: str = ""
) -> Scenario:
    """Validate a parsed document. Raises ``ScenarioError`` (without the file name)."""
    reject_unknown(doc, list(TOP_RULES) + list(SECTIONS), "")
    for section in ("workload", "cluster", "router"):
        if section not in doc:
            raise ScenarioError(section, f"missing required table [{section}]")
    top = {k: check(rule, doc[k], k) for k, rule in TOP_RULES.items() if k in doc}
    name = top.get("name") or (source_path.stem if source_path else "")
    if not name:
        raise ScenarioError("name", "missing required key; expected a non-empty string")
    if not _SAFE_NAME.match(name):
        raise ScenarioError(
            "name", f"got {name!r}; expected letters, digits, '_', '+' or '-' (it names run folders)"
        )
    seeds = top.get("seeds", [0])
    _check_seeds(seeds)
    if top.get("duration_s") is None and top.get("num_requests") is None:
        raise ScenarioError(
            "num_requests", "give num_requests (how many requests) or duration_s (seconds of "
            "arrivals), or both; neither is set",
        )
    workload = _workload(require_table(doc["workload"], "workload"))
    arrivals_raw = require_table(doc.get("arrivals", {}), "arrivals")
    arrivals = ArrivalSpec(**read_table(arrivals_raw, ArrivalSpec, ARRIVAL_RULES, "arrivals"))
    cluster = _cluster(require_table(doc["cluster"], "cluster"))
    router = _router(require_table(doc["router"], "router"))
    slo_raw = require_table(doc.get("slo", {}), "slo")
    slo = SloSpec(**read_table(slo_raw, SloSpec, SLO_RULES, "slo"))
    scenario = Scenario(
        name=name, description=top.get("description", ""), seeds=seeds,
        duration_s=top.get("duration_s"), num_requests=top.get("num_requests"),
        drain_s=top.get("drain_s", 600.0), workload=workload, arrivals=arrivals,
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


def _workload(raw: dict[str, Any]) -> WorkloadSpec:
    values = read_table(raw, WorkloadSpec, WORKLOAD_RULES, "workload", extra=("synthetic",))
    for low, high in (("min_input_len", "max_input_len"), ("min_output_len", "max_output_len")):
        for h in _values(values[high]):
            if h and h < values[low]:
                raise ScenarioError(
                    join("workload", high),
                    f"{h} is below {low} = {values[low]}; expected 0 (no limit) or a value "
                    f">= {values[low]}",
                )
    synthetic_raw = raw.get("synthetic")
    if values["source"] == "synthetic":
        if synthetic_raw is None:
            synthetic_raw = {}
        synthetic_raw = require_table(synthetic_raw, "workload.synthetic")
        for key in ("input", "output"):
            if key not in synthetic_raw:
                raise ScenarioError(
                    f"workload.synthetic.{key}",
                    'missing required key with source = "synthetic"; expected a distribution '
                    'table, e.g. { dist = "lognormal", mean = 512, sigma = 0.8 }',
                )
    synthetic = SyntheticSpec()
    if synthetic_raw is not None:
        synthetic = _synthetic(require_table(synthetic_raw, "workload.synthetic"))
    return WorkloadSpec(**values, synthetic=synthetic)


def _synthetic(raw: dict[str, Any]) -> SyntheticSpec:
    path = "workload.synthetic"
    values = read_table(raw, SyntheticSpec, SYNTHETIC_RULES, path, extra=("input", "output"))
    for key in ("input", "output"):
        if key in raw:
            values[key] = distribution(raw[key], join(path, key))
    if values["prefix_groups"] and not values["prefix_len"]:
        raise ScenarioError(
            join(path, "prefix_len"),
            "is 0 but prefix_groups > 0; expected the shared prefix length in tokens (>= 1)",
        )
    if values["prefix_len"] and not values["prefix_groups"]:
        raise ScenarioError(
            join(path, "prefix_groups"),
            "is 0 but prefix_len > 0; expected how many distinct shared prefixes (>= 1)",
        )
    return SyntheticSpec(**values)


def distribution(raw: Any, path: str) -> dict[str, Any]:
    """A validated length distribution table (plain dict, numbers normalised)."""
    table = require_table(raw, path)
    if "dist" not in table:
        raise ScenarioError(
            join(path, "dist"),
            f"missing required key; expected one of {', '.join(map(repr, DISTRIBUTIONS))}",
        )
    dist = check(Rule("str", choices=DISTRIBUTIONS), table["dist"], join(path, "dist"))
    required, optional = DIST_KEYS[dist]
    reject_unknown(table, ["dist", *required, *optional], path)
    out: dict[str, Any] = {"dist": dist}
    for key in required:
        if key not in table:
            raise ScenarioError(
                join(path, key),
                f"missing required key for dist = {dist!r}; expected {DIST_RULES[key].allowed()}",
            )
    for key in (*required, *optional):
        if key in table:
            out[key] = check(DIST_RULES[key], table[key], join(path, key))
    if "min" in out and "max" in out and out["min"] > out["max"]:
        raise ScenarioError(
            join(path, "max"), f"{out['max']} is below min = {out['min']}; expected max >= min"
        )
    return out


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
        values = read_table(require_table(g, path), GroupSpec, GROUP_RULES, path)
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


def _router(raw: dict[str, Any]) -> RouterSpec:
    values = read_table(raw, RouterSpec, ROUTER_RULES, "router", extra=("strategies",))
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
    patterns = _values(sc.arrivals.pattern)
    if "replay" in patterns and sc.workload.source not in REPLAY_SOURCES:
        raise ScenarioError(
            "arrivals.pattern",
            f"'replay' replays the dataset's own timestamps, but workload.source = "
            f"{sc.workload.source!r} has none; use a source with timestamps "
            f"({', '.join(REPLAY_SOURCES)}) or another pattern "
            f"({', '.join(p for p in PATTERNS if p != 'replay')})",
        )
    a = sc.arrivals
    if "replay" in patterns and any(r > 0 for r in _values(a.target_rate)) and any(
        t != 1.0 for t in _values(a.time_scale)
    ):
        raise ScenarioError(
            "arrivals.target_rate",
            "replay speed is set twice: give time_scale (a speed-up factor) or target_rate "
            "(a mean rate in req/s), not both; leave the other at its default (1.0 / 0)",
        )
    for i, g in enumerate(sc.cluster.groups):
        if g.block_size != sc.workload.block_size:
            raise ScenarioError(
                f"cluster.groups[{i}].block_size",
                f"{g.block_size} differs from workload.block_size = {sc.workload.block_size}; "
                "prompts are hashed per KV block, so both must be equal",
            )


def _values(value: Any) -> list[Any]:
    """An axis' values, or a scalar as a one-element list."""
    return value if isinstance(value, list) else [value]
