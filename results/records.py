"""One record per request, simulated or live, stored as Parquet.

Every request a run was asked to send ends as exactly one row (rule "one record
per request" in docs/architecture.md), whatever happened to it: ``ok``, ``error``, ``timeout``, ``rejected`` (no backend would take it),
``unfinished`` (still in flight, or not yet sent, when the run ended) or ``skipped``
(never sent: an earlier turn of its session failed, which ends the session;
``workload.sessions``). Metric code reads these rows
only, so the simulator and live mode are analysed by the same functions.

Inter-token latency is stored as *arithmetic runs*: a request's token-chunk gaps
``g_0, g_1, ...`` are cut into maximal runs where consecutive gaps differ by a
constant step, and each run is stored as (start, step, count). This is exact (the
gaps are recovered bit for bit up to float rounding) and compact for the
simulator, whose decode steps lengthen by a constant amount while the batch does
not change; live runs, whose gaps are noisy, degrade gracefully to runs of two.
Storing every gap of a million-request run (~250M floats) would not fit the
simulator's memory budget; the runs do. The runs are built as tokens come by
``sim.itl.ItlEncoder`` (which the engine model owns, so that it does not import
this module and pyarrow); ``expand_itl`` reads them back.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from itertools import chain
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from results.counters import COUNTERS_KEY, UnitCounters

#: Bump when a column is added, removed or changes meaning. 2 added ``ready_s`` and
#: ``think_s`` and the ``skipped`` status; version 1 files still read (see ``read_records``).
SCHEMA_VERSION = 2
#: Older versions this one reads, filling the columns they lack (``_upgrade``).
READABLE_VERSIONS = (1, 2)

STATUSES = ("ok", "error", "timeout", "rejected", "unfinished", "skipped")


@dataclass(slots=True)
class RequestRecord:
    """One request's life. Times are seconds from the run's start; NaN if not reached.

    ``arrival_s`` is when the client sent it (vllm bench's TTFT starts here),
    ``dispatch_s`` when the router forwarded it, ``first_token_s`` and
    ``last_token_s`` when the client received the first and last token chunks,
    ``finish_s`` when the response ended (success or failure). ``ready_s`` is when
    the client was ready to send it (its arrival time; for a later turn of a
    closed session, the previous reply's end plus ``think_s``, the think time), so
    ``arrival_s - ready_s`` is time spent waiting at the client (send lag, a busy
    client) and think time is not mistaken for queueing. ``conversation_id`` and
    ``turn`` name the session and the turn.

    The ``router_*`` fields are what the router saw of the chosen backend at
    decision time: the features a latency predictor is trained on.
    """

    experiment_id: str
    point_id: str
    strategy: str
    seed: int
    request_id: int
    conversation_id: str
    turn: int
    backend: int  # -1 when never dispatched
    arrival_s: float
    dispatch_s: float
    first_token_s: float
    last_token_s: float
    finish_s: float
    input_len: int
    cached_tokens: int  # prefix-cache hit at the backend (its own count); -1: not reported
    output_len: int  # tokens actually received
    requested_output_len: int  # max_tokens sent
    num_preemptions: int
    status: str
    error: str = ""
    itl_start: list[float] = field(default_factory=list)
    itl_step: list[float] = field(default_factory=list)
    itl_count: list[int] = field(default_factory=list)
    router_inflight_requests: int = 0
    router_inflight_tokens: int = 0
    router_running: float = math.nan
    router_waiting: float = math.nan
    router_kv_usage: float = math.nan
    router_scrape_age_s: float = math.nan
    router_prefix_hit_tokens: int = 0
    ready_s: float = math.nan
    think_s: float = math.nan


_F64 = pa.float64()
_I64 = pa.int64()
_I32 = pa.int32()

SCHEMA = pa.schema(
    [
        ("experiment_id", pa.string()),
        ("point_id", pa.string()),
        ("strategy", pa.string()),
        ("seed", _I64),
        ("request_id", _I64),
        ("conversation_id", pa.string()),
        ("turn", _I32),
        ("backend", _I32),
        ("arrival_s", _F64),
        ("dispatch_s", _F64),
        ("first_token_s", _F64),
        ("last_token_s", _F64),
        ("finish_s", _F64),
        ("input_len", _I32),
        ("cached_tokens", _I32),
        ("output_len", _I32),
        ("requested_output_len", _I32),
        ("num_preemptions", _I32),
        ("status", pa.string()),
        ("error", pa.string()),
        ("itl_start", pa.list_(_F64)),
        ("itl_step", pa.list_(_F64)),
        ("itl_count", pa.list_(_I32)),
        ("router_inflight_requests", _I32),
        ("router_inflight_tokens", _I64),
        ("router_running", _F64),
        ("router_waiting", _F64),
        ("router_kv_usage", _F64),
        ("router_scrape_age_s", _F64),
        ("router_prefix_hit_tokens", _I32),
        ("ready_s", _F64),
        ("think_s", _F64),
    ],
    metadata={b"vllm_routing_lab.records.schema_version": str(SCHEMA_VERSION).encode()},
)

COLUMNS = [f.name for f in fields(RequestRecord)]
assert COLUMNS == SCHEMA.names, "RequestRecord and SCHEMA must list the same columns"


@dataclass(frozen=True)
class RunLabels:
    """What identifies one unit's records: experiment, grid point, strategy label, seed."""

    experiment_id: str = ""
    point_id: str = ""
    strategy: str = ""
    seed: int = 0


class RecordSchemaError(ValueError):
    """A file is not a record table of this schema version."""


_LIST_COLUMNS = ("itl_start", "itl_step", "itl_count")


def to_table(records: Iterable[RequestRecord]) -> pa.Table:
    """Records to an Arrow table with the versioned schema.

    The ITL list columns are built from flat numpy arrays and offsets rather than
    from Python lists of lists, which is several times faster and lighter.
    """
    records = list(records)
    arrays = []
    for f in SCHEMA:
        name = f.name
        if name in _LIST_COLUMNS:
            lengths = np.fromiter((len(getattr(r, name)) for r in records), np.int32, len(records))
            offsets = np.zeros(len(records) + 1, np.int32)
            np.cumsum(lengths, out=offsets[1:])
            dtype = np.int32 if name == "itl_count" else np.float64
            flat = np.fromiter(chain.from_iterable(getattr(r, name) for r in records), dtype,
                               int(offsets[-1]))
            arrays.append(pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat)))
        else:
            arrays.append(pa.array([getattr(r, name) for r in records], type=f.type))
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


class RecordWriter:
    """Streams records into one Parquet file, a row group at a time.

    Memory stays at one batch however many requests a run has; the file appears
    under its name only when ``close`` succeeds (written to a temporary name and
    renamed), so a crash never leaves a partial unit behind. A batch ends at
    ``batch_rows`` records or at ``batch_itl_runs`` ITL runs, whichever comes
    first: under load a record's inter-token gaps vary step to step and run to
    about 200 runs (some 14 KB of Python floats), so 16k buffered records held
    about 230 MB, more than a simulation of hundreds of replicas needs for its
    own state.
    """

    def __init__(self, path: str | Path, batch_rows: int = 16384, batch_itl_runs: int = 262144) -> None:
        if batch_rows < 1 or batch_itl_runs < 1:
            raise ValueError(f"batch_rows and batch_itl_runs must be >= 1, got {batch_rows}, {batch_itl_runs}")
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.batch_rows = batch_rows
        self.batch_itl_runs = batch_itl_runs
        self.rows = 0
        self._buffer: list[RequestRecord] = []
        self._buffered_runs = 0
        self._writer: pq.ParquetWriter | None = None
        #: The engines' counters over the unit (``results.counters``), stored in the
        #: file's metadata when it closes; set it before leaving the ``with`` block.
        self.counters: UnitCounters | None = None

    def write(self, record: RequestRecord) -> None:
        self._buffer.append(record)
        self._buffered_runs += len(record.itl_count)
        if len(self._buffer) >= self.batch_rows or self._buffered_runs >= self.batch_itl_runs:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer and self._writer is not None:
            return
        table = to_table(self._buffer)
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self.tmp, SCHEMA, compression="zstd")
        self._writer.write_table(table)
        self.rows += table.num_rows
        self._buffer.clear()
        self._buffered_runs = 0

    def close(self) -> Path:
        self._flush()
        if self.counters is not None:
            self._writer.add_key_value_metadata({COUNTERS_KEY: self.counters.to_bytes()})
        self._writer.close()
        self.tmp.replace(self.path)
        return self.path

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_records(path: str | Path, records: Iterable[RequestRecord] | pa.Table,
                  counters: UnitCounters | None = None) -> Path:
    """Write atomically (temp file + rename) so a crash never leaves half a file.

    ``counters``: the engines' counters over the unit, kept in the file's metadata.
    """
    path = Path(path)
    table = records if isinstance(records, pa.Table) else to_table(records)
    if table.schema.remove_metadata() != SCHEMA.remove_metadata():
        raise RecordSchemaError("table does not match the record schema")
    meta = dict(SCHEMA.metadata)
    if counters is not None:
        meta[COUNTERS_KEY] = counters.to_bytes()
    table = table.replace_schema_metadata(meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    tmp.replace(path)
    return path


def check_schema(schema: pa.Schema, source: str = "table") -> None:
    """Raise ``RecordSchemaError`` with what is wrong and what to do."""
    meta = schema.metadata or {}
    version = meta.get(b"vllm_routing_lab.records.schema_version")
    if version is None:
        raise RecordSchemaError(
            f"{source} is not a vllm-routing-lab record file (no schema version in its metadata)"
        )
    if int(version) not in READABLE_VERSIONS:
        raise RecordSchemaError(
            f"{source} has record schema version {int(version)}, this version reads "
            f"{', '.join(map(str, READABLE_VERSIONS))}; re-run the experiment or use the "
            "matching release"
        )
    missing = [n for n in SCHEMA.names if n not in schema.names and n not in _ADDED_IN_2]
    if missing:
        raise RecordSchemaError(f"{source} lacks record columns: {', '.join(missing)}")


def read_records(paths: str | Path | Sequence[str | Path]) -> pa.Table:
    """Read one or more record files, checking each one's schema."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    tables = []
    for p in paths:
        try:
            schema = pq.read_schema(p)
        except (OSError, pa.ArrowInvalid) as exc:
            raise RecordSchemaError(f"{p} is not a readable Parquet file: {exc}") from exc
        check_schema(schema, str(p))
        if all(n in schema.names for n in SCHEMA.names):
            tables.append(pq.read_table(p, schema=SCHEMA))
        else:
            tables.append(_upgrade(pq.read_table(p)))
    if not tables:
        return SCHEMA.empty_table()
    return pa.concat_tables(tables)


#: Columns version 2 added, and how a version 1 file's rows fill them.
_ADDED_IN_2 = ("ready_s", "think_s")


def _upgrade(table: pa.Table) -> pa.Table:
    """A version 1 table in this schema: ready when sent, no think time (open-loop sends)."""
    n = table.num_rows
    columns = {
        "ready_s": table.column("arrival_s"),
        "think_s": pa.array(np.full(n, np.nan), type=_F64),
    }
    arrays = [table.column(f.name).cast(f.type) if f.name in table.column_names else columns[f.name]
              for f in SCHEMA]
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def expand_itl(start: Sequence[float], step: Sequence[float], count: Sequence[int]) -> np.ndarray:
    """Every gap of one request's runs, in order (the runs are built by ``sim.itl.ItlEncoder``)."""
    parts = [s + st * np.arange(c, dtype=np.float64) for s, st, c in zip(start, step, count)]
    return np.concatenate(parts) if parts else np.zeros(0)
