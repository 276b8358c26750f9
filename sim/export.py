"""``python -m sim SCENARIO|RUN --export-trace DIR``: the requests a run sends, in formats other tools read.

For every grid point and seed, the trace is built exactly as the sweep builds it
(the same tables, seed and size, so the same requests, arrival times, sessions,
turns and block hashes) and written by ``workload.formats``: Mooncake JSONL
(``<point>/seed=<n>.mooncake.jsonl``; ``vllm bench serve --dataset-name
timed_trace``, AIPerf's ``mooncake_trace``) and vLLM's custom dataset
(``<point>/seed=<n>.vllm-custom.jsonl``). Given a run directory instead of a
scenario, the tables come from its manifest (``resolved_scenario`` and each
point's axes), so the export is that run's workload.
"""
from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from workload import build_trace
from workload.formats import FORMATS, export_mooncake, export_vllm_custom


@dataclass(frozen=True)
class TraceSpec:
    """What ``build_trace`` needs for one (grid point, seed)."""

    point_id: str
    seed: int
    workload: dict[str, Any]
    arrivals: dict[str, Any]
    num_requests: int | None
    duration_s: float | None


def scenario_traces(scenario, points) -> Iterator[TraceSpec]:
    """The traces of a scenario's grid: one per point and seed."""
    for p in points:
        sc = p.scenario
        for seed in scenario.seeds:
            yield TraceSpec(p.point_id, int(seed), asdict(sc.workload), asdict(sc.arrivals),
                            sc.num_requests, sc.duration_s)


def run_traces(run_path: str | Path) -> Iterator[TraceSpec]:
    """The traces of a run directory, from its manifest (every point's axes set)."""
    manifest = json.loads((Path(run_path) / "manifest.json").read_text())
    resolved = manifest.get("resolved_scenario")
    if not isinstance(resolved, dict):
        raise ValueError(f"{run_path}: the manifest has no resolved_scenario to rebuild traces from")
    for p in manifest.get("points") or []:
        tables = {"workload": copy.deepcopy(resolved["workload"]),
                  "arrivals": copy.deepcopy(resolved["arrivals"])}
        for path, value in (p.get("axes") or {}).items():
            section, _, key = path.partition(".")
            if section in tables:
                tables[section][key] = value
        for seed in manifest.get("seeds") or resolved.get("seeds") or [0]:
            yield TraceSpec(str(p["point_id"]), int(seed), tables["workload"], tables["arrivals"],
                            resolved.get("num_requests"), resolved.get("duration_s"))


def export_traces(specs: Sequence[TraceSpec] | Iterator[TraceSpec], out: str | Path,
                  formats: Sequence[str] = tuple(FORMATS), *, hash_block_size: int | None = None,
                  on_file=None) -> list[Path]:
    """Build each trace and write it in each format; returns the files written."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown trace format {unknown[0]!r}; allowed: {', '.join(FORMATS)}")
    out = Path(out)
    written = []
    for spec in specs:
        trace = build_trace(spec.workload, spec.arrivals, seed=spec.seed,
                            num_requests=spec.num_requests, duration_s=spec.duration_s)
        for fmt in formats:
            path = out / spec.point_id / f"seed={spec.seed}{FORMATS[fmt]}"
            if fmt == "mooncake":
                export_mooncake(trace, path, hash_block_size)
            else:
                export_vllm_custom(trace, path, tokenizer=spec.workload.get("tokenizer", "deepseek"))
            written.append(path)
            if on_file is not None:
                on_file(path, len(trace))
    return written
