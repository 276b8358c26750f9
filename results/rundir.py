"""The run directory: one layout for simulated and live runs.

::

    runs/<experiment-id>/
      manifest.json          what ran: mode, scenario, grid points and axes, strategies,
                             seeds, environment and versions
      scenario.toml          the scenario file as given
      records/point=<p>/strategy=<s>/seed=<n>.parquet
                             one file per (grid point, strategy, seed) *unit*: a unit
                             is finished exactly when its file exists (written
                             atomically), which is what ``--resume`` relies on
      failures/<unit>.txt    the error of a unit that failed (removed when it succeeds)
      summary.json           metrics per unit and per point x strategy across seeds

The hive-style ``key=value`` folders let pyarrow read the whole run as one
partitioned table, and each file also carries those columns itself.
"""
from __future__ import annotations

import json
import os
import platform
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from results.counters import UnitCounters
from results.jsonsafe import dumps
from results.records import (
    RecordSchemaError, RecordWriter, check_schema, read_records, write_records,
)

MANIFEST = "manifest.json"
_SAFE = re.compile(r"[^A-Za-z0-9._+-]")


class NotARunDirectory(FileNotFoundError):
    """The path does not hold a run (no manifest)."""


@dataclass(frozen=True, slots=True)
class Unit:
    """The smallest piece of work a sweep runs and resumes by."""

    point_id: str
    strategy: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.point_id}/{self.strategy}/{self.seed}"


def safe_name(text: str) -> str:
    """A file-system safe form of a label (ids and strategy labels are already safe)."""
    return _SAFE.sub("_", text)


class RunDir:
    """Create, resume and read a run directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # --- creating -------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | Path,
        manifest: dict[str, Any],
        scenario_text: str | None = None,
        *,
        exist_ok: bool = False,
    ) -> RunDir:
        run = cls(path)
        if run.manifest_path.exists() and not exist_ok:
            raise FileExistsError(f"{run.path} already holds a run; pass --resume to continue it")
        run.path.mkdir(parents=True, exist_ok=True)
        full = {"environment": environment(), **manifest}
        atomic_write_text(run.manifest_path, dumps(full))
        if scenario_text is not None:
            atomic_write_text(run.path / "scenario.toml", scenario_text)
        return run

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        run = cls(path)
        if not run.path.is_dir():
            raise NotARunDirectory(f"{run.path} does not exist")
        if not run.manifest_path.exists():
            raise NotARunDirectory(
                f"{run.path} is not a run directory (no {MANIFEST}); "
                "point at a folder written by `python -m sim` or `python -m live`"
            )
        return run

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads(self.manifest_path.read_text())

    def update_manifest(self, **changes: Any) -> None:
        m = self.manifest
        m.update(changes)
        atomic_write_text(self.manifest_path, dumps(m))

    # --- units ----------------------------------------------------------------
    def unit_path(self, unit: Unit) -> Path:
        return (
            self.path
            / "records"
            / f"point={safe_name(unit.point_id)}"
            / f"strategy={safe_name(unit.strategy)}"
            / f"seed={unit.seed}.parquet"
        )

    def failure_path(self, unit: Unit) -> Path:
        name = f"{safe_name(unit.point_id)}__{safe_name(unit.strategy)}__{unit.seed}.txt"
        return self.path / "failures" / name

    def is_done(self, unit: Unit) -> bool:
        return self.unit_path(unit).exists()

    def unreadable(self, unit: Unit) -> str | None:
        """Why a unit's records file does not read back (footer, schema), or None if it does.

        A file cut short or overwritten (a full disk, a copy interrupted, a hand edit)
        exists but is not a finished unit; callers redo such units (``set_aside``).
        """
        path = self.unit_path(unit)
        try:
            check_schema(pq.read_schema(path), str(path))
        except (OSError, pa.ArrowInvalid, RecordSchemaError) as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    def set_aside(self, unit: Unit, reason: str) -> Path:
        """Move an unreadable records file to ``<name>.unreadable`` (kept for inspection; no
        longer counted as done) and record why in ``failures/``. Returns its new path."""
        path = self.unit_path(unit)
        moved = path.with_name(path.name + ".unreadable")
        path.replace(moved)
        self.record_failure(unit, f"the records file {path} did not read back ({reason}); it was "
                                  f"moved to {moved.name} and the unit is redone by --resume\n")
        return moved

    def write_unit(self, unit: Unit, records: Any, counters: UnitCounters | None = None) -> Path:
        """Write a unit's records (and the engines' counters over it) atomically."""
        path = write_records(self.unit_path(unit), records, counters)
        self.failure_path(unit).unlink(missing_ok=True)
        return path

    def unit_writer(self, unit: Unit, batch_rows: int = 16384) -> RecordWriter:
        """A streaming writer for a unit's records (the file appears when it closes)."""
        self.failure_path(unit).unlink(missing_ok=True)
        return RecordWriter(self.unit_path(unit), batch_rows)

    def record_failure(self, unit: Unit, error: str) -> None:
        path = self.failure_path(unit)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, error)

    def failures(self) -> dict[str, str]:
        folder = self.path / "failures"
        if not folder.is_dir():
            return {}
        return {p.stem: p.read_text() for p in sorted(folder.glob("*.txt"))}

    def record_files(self) -> list[Path]:
        return sorted((self.path / "records").glob("point=*/strategy=*/seed=*.parquet"))

    # --- reading --------------------------------------------------------------
    def read_table(self) -> pa.Table:
        files = self.record_files()
        if not files:
            raise RecordSchemaError(f"{self.path} has no record files yet")
        return read_records(files)

    def load(self) -> pd.DataFrame:
        """Every record of the run as one pandas DataFrame."""
        return self.read_table().to_pandas()

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(
            self.path / "summary.json", dumps(summary)
        )


def load_run(path: str | Path) -> pd.DataFrame:
    """Load a run directory (or a single record file) into pandas: the one call."""
    p = Path(path)
    if p.is_file():
        return read_records(p).to_pandas()
    return RunDir.open(p).load()


def environment() -> dict[str, Any]:
    """Versions and machine facts recorded with every run."""
    versions: dict[str, str] = {}
    for mod in ("numpy", "pandas", "pyarrow", "simpy", "sklearn", "torch", "aiohttp"):
        m = sys.modules.get(mod)
        if m is not None:
            versions[mod] = getattr(m, "__version__", "?")
    from importlib import metadata

    try:
        versions["vllm-routing-lab"] = metadata.version("vllm-routing-lab")
    except metadata.PackageNotFoundError:
        versions["vllm-routing-lab"] = "source"
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "versions": versions,
    }


def iter_units(points: Iterable[str], strategies: Iterable[str], seeds: Iterable[int]) -> list[Unit]:
    seeds = list(seeds)
    strategies = list(strategies)
    return [Unit(p, s, int(n)) for p in points for s in strategies for n in seeds]


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` through a temporary file and a rename: a crash leaves the old file or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


