"""Per-unit metrics, defined as ``vllm bench serve`` defines them.

Reference: vLLM ``vllm/benchmarks/serve.py`` (``calculate_metrics``) and
``vllm/benchmarks/lib/endpoint_request_func.py`` (how one request is timed).
In vLLM's client a request is timed from the moment it is sent (``st``):
``ttft`` is the first chunk's arrival minus ``st``, ``itl`` is the list of gaps
between consecutive chunks, and ``latency`` (E2EL) is the *last chunk's* arrival
minus ``st``. ``calculate_metrics`` then pools these over the successful
requests only. Here the same quantities come from a record's times:

=========  =====================================================================
TTFT       ``first_token_s - arrival_s``                      (ok requests)
E2EL       ``last_token_s - arrival_s``                       (ok requests)
TPOT       ``(E2EL - TTFT) / (output_len - 1)`` when ``output_len > 1``
ITL        every chunk gap of every ok request, pooled (exact; see ``itl_stats``)
duration   ``max(finish_s) - min(arrival_s)`` over *all* requests: first send to
           the last response's end, as vLLM's benchmark clock spans the sends
           and ``asyncio.gather`` of every request, failed ones included
goodput    ok requests meeting every SLO given (``ttft``, ``tpot``, ``e2el``;
           metric <= SLO; TPOT counts as 0 when ``output_len <= 1``) / duration
=========  =====================================================================

Each latency gets mean, median, std (population, ``np.std``), p90, p95 and p99
(``np.percentile``, linear interpolation), reported in milliseconds under vLLM's
result-file names (``mean_ttft_ms``, ``median_ttft_ms``, ``p99_ttft_ms``...).
Throughputs: ``request_throughput = completed / duration``,
``output_throughput = output tokens of ok requests / duration``,
``total_token_throughput = (input + output tokens of ok requests) / duration``.

Deliberate differences from vLLM, all documented in ``docs/results-format.md``:
a latency with no ok request is NaN (vLLM prints 0, which would rank a
strategy that served nothing as the fastest); failures are split by status
(error, timeout, rejected, unfinished, skipped) instead of one ``failed`` count;
and ``slo_attainment`` (good requests / all requests sent, i.e. all but the
``skipped`` turns of sessions that had ended) is added so a strategy cannot look
good by failing requests.

For Pareto charts (as ``vllm bench sweep plot_pareto`` draws them):
``output_throughput_per_replica`` is output throughput over the fleet's
backends, ``output_throughput_per_user`` output throughput over
``mean_inflight``, the time-averaged number of requests in flight at the client
(vLLM divides by the configured ``--max-concurrency``; the measured mean is the
same quantity for any arrival pattern). ``overloaded`` (1 or 0) says whether the
unit's queue grew without bound (``results.saturation``).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from results.bootstrap import unit_replicates
from results.counters import UnitCounters, read_counters
from results.itl_stats import RunChunks, pooled_itl_stats, pooled_itl_stats_stream
from results.records import STATUSES, RequestRecord, read_records, to_table
from results.saturation import assess_saturation

#: Percentiles reported for every latency, besides the median.
PERCENTILES = (90, 95, 99)
LATENCIES = ("ttft", "tpot", "itl", "e2el")
STATS = ("mean", "median", "std") + tuple(f"p{p}" for p in PERCENTILES)
#: SLO keys accepted (milliseconds), as in ``vllm bench serve --goodput ttft:500``.
SLO_KEYS = ("ttft", "tpot", "e2el")


@dataclass(frozen=True, slots=True)
class MetricInfo:
    """What a metric means for tables, charts and ranking."""

    label: str
    unit: str
    #: "lower" or "higher" is better; None for counts that are not a quality.
    better: str | None


def _latency_infos() -> dict[str, MetricInfo]:
    out = {}
    for lat in LATENCIES:
        for stat in STATS:
            name = "median" if stat == "median" else stat
            out[f"{stat}_{lat}_ms"] = MetricInfo(
                f"{lat.upper()} {name}", "ms", None if stat == "std" else "lower"
            )
    return out


#: Every scalar metric ``unit_metrics`` returns, in display order.
METRICS: dict[str, MetricInfo] = {
    **_latency_infos(),
    "request_throughput": MetricInfo("request throughput", "req/s", "higher"),
    "request_goodput": MetricInfo("goodput", "req/s", "higher"),
    "slo_attainment": MetricInfo("SLO attainment", "fraction", "higher"),
    "output_throughput": MetricInfo("output token throughput", "tok/s", "higher"),
    "total_token_throughput": MetricInfo("total token throughput", "tok/s", "higher"),
    "duration": MetricInfo("duration", "s", None),
    "offered_rate": MetricInfo("offered load (measured)", "req/s", None),
    "num_requests": MetricInfo("requests", "count", None),
    "completed": MetricInfo("ok", "count", "higher"),
    "failed": MetricInfo("not ok", "count", "lower"),
    "num_error": MetricInfo("errors", "count", "lower"),
    "num_timeout": MetricInfo("timeouts", "count", "lower"),
    "num_rejected": MetricInfo("rejected", "count", "lower"),
    "num_unfinished": MetricInfo("unfinished", "count", "lower"),
    "num_skipped": MetricInfo("skipped (session ended)", "count", "lower"),
    "total_input_tokens": MetricInfo("input tokens (ok)", "tokens", None),
    "total_output_tokens": MetricInfo("output tokens (ok)", "tokens", None),
    "prefix_hit_rate": MetricInfo("prefix-cache hit rate (engine counters)", "fraction", "higher"),
    "expected_hit_rate": MetricInfo("prefix hit the router expected (ok requests)", "fraction", None),
    "served_hit_rate": MetricInfo("prefix hit the engine gave (ok requests)", "fraction", "higher"),
    "mean_preemptions": MetricInfo("preemptions per ok request", "count", "lower"),
    "max_backend_share": MetricInfo("largest backend share", "fraction", "lower"),
    "load_imbalance": MetricInfo("load imbalance (max/mean work)", "ratio", "lower"),
    "request_imbalance": MetricInfo("request imbalance (max/mean requests)", "ratio", "lower"),
    "inflight_imbalance": MetricInfo("in-flight imbalance (time-averaged max/mean)", "ratio", "lower"),
    "peak_inflight": MetricInfo("peak in-flight on one backend", "requests", "lower"),
    "mean_inflight": MetricInfo("mean requests in flight (client side)", "requests", None),
    "output_throughput_per_user": MetricInfo("output tokens/s per user", "tok/s", "higher"),
    "output_throughput_per_replica": MetricInfo("output tokens/s per replica", "tok/s", "higher"),
    "overloaded": MetricInfo("overloaded (queue grows without bound)", "0/1", None),
    "inflight_growth": MetricInfo("growth of requests in flight", "req/s", None),
}

#: Columns of the per-backend table (``UnitMetrics.backends``, ``summary.json``'s "backends").
BACKEND_COLUMNS = ("backend", "name", "requests", "share", "peak_inflight", "work_tokens",
                   "work_share", "prefix_queries", "prefix_hits", "hit_rate",
                   "expected_hit_rate", "served_hit_rate")

_NEEDED = (
    "status", "backend", "arrival_s", "dispatch_s", "first_token_s", "last_token_s",
    "finish_s", "input_len", "cached_tokens", "output_len", "num_preemptions",
    "itl_start", "itl_step", "itl_count", "router_prefix_hit_tokens", "router_scrape_age_s",
)


def parse_slo(slo: Mapping[str, Any] | None) -> dict[str, float]:
    """Normalise an SLO mapping to ``{"ttft"|"tpot"|"e2el": milliseconds}``.

    Accepts the manifest's ``ttft_ms`` form and vLLM's bare ``ttft`` form;
    ``None`` values mean "not given".
    """
    out: dict[str, float] = {}
    for key, value in (slo or {}).items():
        name = key[:-3] if key.endswith("_ms") else key
        if name not in SLO_KEYS:
            allowed = ", ".join(f"{k}_ms" for k in SLO_KEYS)
            raise ValueError(f"unknown SLO key {key!r}; allowed keys: {allowed}")
        if value is None:
            continue
        v = float(value)
        if not v > 0:
            raise ValueError(f"SLO {key} must be a positive number of milliseconds, got {value!r}")
        out[name] = v
    return out


@dataclass(frozen=True, slots=True)
class UnitMetrics:
    """Metrics of one unit (grid point x strategy x seed).

    ``values`` holds every scalar in ``METRICS`` (NaN where undefined);
    ``backends`` one row per backend of the fleet.
    """

    values: dict[str, float]
    backends: list[dict[str, Any]]
    #: Within-run bootstrap deviations of the latency percentiles (``results.bootstrap``),
    #: by metric; empty when not computed.
    replicates: dict[str, np.ndarray] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": dict(self.values), "backends": [dict(b) for b in self.backends],
                "replicates": {k: np.asarray(v, dtype=np.float64).tolist()
                               for k, v in self.replicates.items()}}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> UnitMetrics:
        reps = {k: np.asarray(v, dtype=np.float64) for k, v in (doc.get("replicates") or {}).items()}
        return cls(dict(doc["metrics"]), list(doc["backends"]), reps)


_ITL_COLUMNS = ("itl_start", "itl_step", "itl_count")


def file_metrics(path: str | Path, slo: Mapping[str, Any] | None = None, *,
                 backend_names: Sequence[str] | None = None) -> UnitMetrics:
    """``unit_metrics`` of one record file, with the engines' counters stored in it.

    The ITL runs are not read whole: the statistics read them row group by row
    group, once per pass (``results.itl_stats.pooled_itl_stats_stream``), so the
    memory is the scalar columns plus one row group's runs, not every run of the
    unit (over 100 per request under heavy load). The values are the same floats.
    """
    import pyarrow.parquet as pq

    from results.records import SCHEMA, check_schema

    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowInvalid):
        schema = None
    if schema is None or not all(n in schema.names for n in SCHEMA.names):
        # Unreadable or an older schema version: read_records says why or upgrades it.
        return unit_metrics(read_records(path), slo, backend_names=backend_names,
                            counters=read_counters(path))
    check_schema(schema, str(path))
    table = pq.read_table(path, columns=[n for n in SCHEMA.names if n not in _ITL_COLUMNS],
                          schema=SCHEMA)
    return unit_metrics(table, slo, backend_names=backend_names, counters=read_counters(path),
                        itl_runs=file_itl_runs(path))


def file_itl_runs(path: str | Path) -> RunChunks:
    """The ITL runs of a record file's ok rows, one row group at a time (``RunChunks``)."""
    import pyarrow.parquet as pq

    def chunks():
        pf = pq.ParquetFile(path)
        for g in range(pf.num_row_groups):
            t = pf.read_row_group(g, columns=["status", *_ITL_COLUMNS])
            ok = pc.equal(t.column("status"), "ok")
            if not pc.all(ok).as_py():
                t = t.filter(ok)
            yield tuple(pc.list_flatten(t.column(c)).to_numpy() for c in _ITL_COLUMNS)
    return chunks


def unit_metrics(
    records: pa.Table | pd.DataFrame | Sequence[RequestRecord],
    slo: Mapping[str, Any] | None = None,
    *,
    backend_names: Sequence[str] | None = None,
    counters: UnitCounters | None = None,
    bootstrap: bool = True,
    itl_runs: RunChunks | None = None,
) -> UnitMetrics:
    """All metrics of one unit's records (one row per request, every status).

    ``slo`` in milliseconds (``{"ttft_ms": 500, "tpot_ms": 50}``; missing keys are
    not checked); with no SLO, goodput and attainment are NaN. ``backend_names``
    lists the fleet (index = ``record.backend``) so a backend that got nothing
    still counts in the load balance. ``counters``: the engines' counters over the
    unit (``results.counters``); without them the hit rate and the work come from
    the records. ``bootstrap``: also compute the within-run bootstrap deviations of the
    latency percentiles (``results.bootstrap``) that the intervals across seeds use.
    ``itl_runs``: the ok rows' ITL runs in chunks, read in several passes (then the
    records need no ITL columns; ``file_metrics`` passes them).
    """
    cols = _Columns.of(records, itl=itl_runs is None)
    slo_ms = parse_slo(slo)
    status = cols.scalar("status")
    unknown = sorted(set(np.unique(status).tolist()) - set(STATUSES))
    if unknown:
        raise ValueError(f"unknown record status {unknown[0]!r}; allowed: {', '.join(STATUSES)}")
    ok = status == "ok"
    v: dict[str, float] = {}

    arrival = cols.scalar("arrival_s").astype(np.float64)
    first = cols.scalar("first_token_s").astype(np.float64)
    last = cols.scalar("last_token_s").astype(np.float64)
    out_len = cols.scalar("output_len").astype(np.int64)
    ttft = (first - arrival)[ok]
    e2el = (last - arrival)[ok]
    bad = ~np.isfinite(ttft) | ~np.isfinite(e2el)
    if bad.any():
        ids = cols.scalar("request_id")[ok][bad][:5].tolist() if cols.has("request_id") else []
        raise ValueError(
            "records with status 'ok' must have finite arrival_s, first_token_s and "
            f"last_token_s; request ids {ids} do not"
        )
    ok_len = out_len[ok]
    multi = ok_len > 1
    tpot = (e2el[multi] - ttft[multi]) / (ok_len[multi] - 1)

    _put_stats(v, "ttft", ttft)
    _put_stats(v, "tpot", tpot)
    _put_stats(v, "e2el", e2el)
    if itl_runs is not None:
        itl = pooled_itl_stats_stream(itl_runs, (50,) + PERCENTILES)
    else:
        starts, steps, counts = cols.itl(ok)
        itl = pooled_itl_stats(starts, steps, counts, (50,) + PERCENTILES)
        del starts, steps, counts
    v["mean_itl_ms"] = itl.mean * 1000
    v["median_itl_ms"] = itl.percentiles[50.0] * 1000
    v["std_itl_ms"] = itl.std * 1000
    for p in PERCENTILES:
        v[f"p{p}_itl_ms"] = itl.percentiles[float(p)] * 1000

    n = len(status)
    completed = int(ok.sum())
    finish = cols.scalar("finish_s").astype(np.float64)
    duration = _span(arrival, finish)
    in_len = cols.scalar("input_len").astype(np.int64)
    total_in, total_out = int(in_len[ok].sum()), int(ok_len.sum())
    v["num_requests"] = n
    v["completed"] = completed
    v["failed"] = n - completed
    for s in STATUSES[1:]:
        v[f"num_{s}"] = int((status == s).sum())
    v["total_input_tokens"] = total_in
    v["total_output_tokens"] = total_out
    v["duration"] = duration
    v["request_throughput"] = _per(completed, duration)
    v["output_throughput"] = _per(total_out, duration)
    v["total_token_throughput"] = _per(total_in + total_out, duration)
    v["offered_rate"] = _offered_rate(arrival)

    if slo_ms:
        good = _good_requests(slo_ms, ttft, e2el, ok_len)
        v["request_goodput"] = _per(good, duration)
        sent = n - v["num_skipped"]  # a skipped turn was never sent (its session had ended)
        v["slo_attainment"] = good / sent if sent else math.nan
    else:
        v["request_goodput"] = math.nan
        v["slo_attainment"] = math.nan

    cached_all = cols.scalar("cached_tokens").astype(np.int64)
    expected_all = cols.scalar("router_prefix_hit_tokens").astype(np.int64)
    # A record carries a router decision when its scrape age is known (inf before the
    # first scrape); requests routed by a gateway do not say what it expected.
    decided = ~np.isnan(cols.scalar("router_scrape_age_s").astype(np.float64))
    v["served_hit_rate"] = _served_hit_rate(cached_all[ok], in_len[ok])
    known = ok & decided
    v["expected_hit_rate"] = _ratio(expected_all[known].sum(), in_len[known].sum())
    fleet = counters.fleet_hit_rate if counters is not None else math.nan
    v["prefix_hit_rate"] = fleet if fleet == fleet else v["served_hit_rate"]
    pre = cols.scalar("num_preemptions").astype(np.int64)[ok]
    v["mean_preemptions"] = float(pre.mean()) if completed else math.nan

    # Requests in flight at the client (sent -> finished), averaged over the run: the
    # number of users served at once (Little's law), by which ``vllm bench sweep
    # plot_pareto`` divides throughput (it takes the configured --max-concurrency).
    sent = np.isfinite(arrival) & np.isfinite(finish)
    v["mean_inflight"] = (float((finish[sent] - arrival[sent]).sum() / duration)
                          if duration > 0 else math.nan)
    v["output_throughput_per_user"] = (v["output_throughput"] / v["mean_inflight"]
                                       if v["mean_inflight"] > 0 else math.nan)
    sat = assess_saturation(arrival, finish, first, ok & np.isfinite(first))
    v["overloaded"] = float(sat.overloaded)
    v["inflight_growth"] = sat.inflight_slope

    backends = _backend_rows(cols, backend_names, counters)
    v["output_throughput_per_replica"] = (v["output_throughput"] / len(backends)
                                          if backends else math.nan)
    shares = np.array([b["share"] for b in backends], dtype=np.float64)
    work = np.array([b["work_tokens"] for b in backends], dtype=np.float64)
    dispatched = sum(b["requests"] for b in backends)
    if backends and dispatched:
        v["max_backend_share"] = float(shares.max())
        v["request_imbalance"] = peak_to_mean(shares)
        v["load_imbalance"] = peak_to_mean(work)
        v["inflight_imbalance"] = inflight_imbalance(
            cols.scalar("backend").astype(np.int64), cols.scalar("dispatch_s").astype(np.float64),
            cols.scalar("finish_s").astype(np.float64), len(backends))
        v["peak_inflight"] = float(max(b["peak_inflight"] for b in backends))
    else:
        for k in ("max_backend_share", "request_imbalance", "load_imbalance",
                  "inflight_imbalance", "peak_inflight"):
            v[k] = math.nan
    ordered = {k: float(v[k]) for k in METRICS}
    replicates = {}
    if bootstrap:
        replicates = unit_replicates(_latencies_in_order(cols, ok, ttft, e2el, ok_len),
                                     *_unit_key(cols))
    return UnitMetrics(ordered, backends, replicates)


def _unit_key(cols: _Columns) -> tuple[str, int]:
    """(point_id, seed) of a unit's records: what pairs its bootstrap resamples."""
    point = cols.scalar("point_id")[:1].tolist() if cols.has("point_id") else []
    seed = cols.scalar("seed")[:1].tolist() if cols.has("seed") else []
    return (str(point[0]) if point else "", int(seed[0]) if seed else 0)


def _latencies_in_order(cols: _Columns, ok: np.ndarray, ttft: np.ndarray, e2el: np.ndarray,
                        ok_len: np.ndarray) -> dict[str, np.ndarray]:
    """TTFT, TPOT and E2EL in ms per request, ordered by request id (the trace's order, the
    same for every strategy), NaN where a request has none."""
    n = len(ok)
    out = {k: np.full(n, np.nan) for k in ("ttft", "tpot", "e2el")}
    out["ttft"][ok] = ttft * 1000
    out["e2el"][ok] = e2el * 1000
    with np.errstate(divide="ignore", invalid="ignore"):
        out["tpot"][ok] = np.where(ok_len > 1, (e2el - ttft) / np.maximum(ok_len - 1, 1) * 1000, np.nan)
    if cols.has("request_id"):
        order = np.argsort(cols.scalar("request_id").astype(np.int64), kind="stable")
        out = {k: v[order] for k, v in out.items()}
    return out


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else math.nan


def _served_hit_rate(cached: np.ndarray, in_len: np.ndarray) -> float:
    """Cached over prompt tokens of the requests whose backend reported its hit.

    A backend that does not report ``cached_tokens`` (records carry -1) is unknown, not
    0%: only reporting requests count, and none reporting gives NaN.
    """
    known = cached >= 0
    return _ratio(cached[known].sum(), in_len[known].sum())


def peak_to_mean(load: Sequence[float] | np.ndarray) -> float:
    """``max / mean`` of per-backend loads: 1 is perfectly even, ``n`` is all on one of ``n``.

    The imbalance factor of balanced allocations: consistent hashing with bounded
    loads (Mirrokni, Thorup and Zadimoghaddam, SODA 2018) keeps every bin's load at
    most ``c`` times the mean, i.e. this ratio <= ``c``. NaN when nothing was loaded.
    """
    x = np.asarray(load, dtype=np.float64)
    if len(x) == 0 or not np.isfinite(x).all() or x.sum() <= 0:
        return math.nan
    return float(x.max() / x.mean())


#: Cells (events x backends) ``inflight_imbalance`` holds at once: 4 bytes each, 16 MB.
INFLIGHT_CHUNK_CELLS = 1 << 22


def inflight_imbalance(backend: np.ndarray, start: np.ndarray, end: np.ndarray, n: int,
                       chunk: int | None = None) -> float:
    """Time-averaged peak-to-mean of requests in flight: ``∫ max_b n_b(t) dt / ∫ mean_b n_b(t) dt``.

    ``n_b(t)`` counts the requests dispatched to backend ``b`` and not finished at
    ``t`` (intervals ``[start, end)``). Totals over a run can be even while, at every
    moment, one backend holds the queue (a session pinned to a replica, a cache hot
    spot that moves); this ratio sees that. Idle time counts in neither integral.
    Computed in chunks of ``chunk`` events (default: ``INFLIGHT_CHUNK_CELLS // n``, at
    least 1024), so memory stays about ``4 x chunk x n`` bytes, 16 MB up to 4096
    backends, whatever the run's size (levels are int32: fewer than 2**31 requests).
    """
    keep = (backend >= 0) & (backend < n) & np.isfinite(start) & np.isfinite(end) & (end > start)
    if n < 1 or not keep.any():
        return math.nan
    b, s, e = backend[keep], start[keep], end[keep]
    mean_integral = float((e - s).sum()) / n
    times = np.concatenate([s, e])
    who = np.concatenate([b, b])
    delta = np.concatenate([np.ones(len(s), np.int32), -np.ones(len(e), np.int32)])
    order = np.lexsort((delta, times))
    times, who, delta = times[order], who[order], delta[order]
    gaps = np.diff(times, append=times[-1])  # the level after event i lasts gaps[i]
    level = np.zeros(n, np.int32)
    if chunk is None:
        chunk = max(1024, INFLIGHT_CHUNK_CELLS // n)
    peak_integral = 0.0
    for lo in range(0, len(times), chunk):
        hi = min(lo + chunk, len(times))
        steps = np.zeros((hi - lo, n), np.int32)
        steps[np.arange(hi - lo), who[lo:hi]] = delta[lo:hi]
        levels = np.cumsum(steps, axis=0, out=steps)  # in place: no int64 copy
        levels += level
        peak_integral += float((levels.max(axis=1) * gaps[lo:hi]).sum())
        level = levels[-1].copy()  # not a view: frees the chunk
    return peak_integral / mean_integral if mean_integral > 0 else math.nan


def _put_stats(v: dict[str, float], name: str, x: np.ndarray) -> None:
    if len(x) == 0:
        for stat in STATS:
            v[f"{stat}_{name}_ms"] = math.nan
        return
    v[f"mean_{name}_ms"] = float(np.mean(x)) * 1000
    v[f"median_{name}_ms"] = float(np.median(x)) * 1000
    v[f"std_{name}_ms"] = float(np.std(x)) * 1000
    for p, q in zip(PERCENTILES, np.percentile(x, PERCENTILES)):
        v[f"p{p}_{name}_ms"] = float(q) * 1000


def _good_requests(
    slo_ms: Mapping[str, float], ttft: np.ndarray, e2el: np.ndarray, out_len: np.ndarray
) -> int:
    """vLLM's rule: compare in seconds, ``slo / 1000 >= metric``; TPOT is 0 below 2 tokens."""
    good = np.ones(len(ttft), dtype=bool)
    if "ttft" in slo_ms:
        good &= ttft <= slo_ms["ttft"] / 1000
    if "tpot" in slo_ms:
        with np.errstate(divide="ignore", invalid="ignore"):
            tpot = np.where(out_len > 1, (e2el - ttft) / np.maximum(out_len - 1, 1), 0.0)
        good &= tpot <= slo_ms["tpot"] / 1000
    if "e2el" in slo_ms:
        good &= e2el <= slo_ms["e2el"] / 1000
    return int(good.sum())


def _span(arrival: np.ndarray, finish: np.ndarray) -> float:
    if len(arrival) == 0 or not np.isfinite(arrival).any() or not np.isfinite(finish).any():
        return math.nan
    return float(np.nanmax(finish) - np.nanmin(arrival))


def _per(amount: float, duration: float) -> float:
    return amount / duration if duration > 0 else math.nan


def _offered_rate(arrival: np.ndarray) -> float:
    """Measured arrival rate: ``(n - 1) / (last send - first send)``."""
    a = arrival[np.isfinite(arrival)]
    if len(a) < 2:
        return math.nan
    span = float(a.max() - a.min())
    return (len(a) - 1) / span if span > 0 else math.nan


# --- backends -----------------------------------------------------------------


def _backend_rows(cols: _Columns, names: Sequence[str] | None,
                  counters: UnitCounters | None = None) -> list[dict[str, Any]]:
    """Per backend: requests, share, peak in flight, work, and hit rates.

    ``work_tokens`` is the tokens the engine computed for the requests sent there:
    the prompt tokens it did not find cached plus the tokens it generated. The
    uncached prompt tokens are ``prefix_queries - prefix_hits`` from the engine's
    counters when the unit has them (exact, whatever the client learned), else
    ``input_len - cached_tokens`` of every dispatched record.
    """
    backend = cols.scalar("backend").astype(np.int64)
    dispatch = cols.scalar("dispatch_s").astype(np.float64)
    finish = cols.scalar("finish_s").astype(np.float64)
    status = cols.scalar("status")
    in_len = cols.scalar("input_len").astype(np.int64)
    cached = cols.scalar("cached_tokens").astype(np.int64)
    out_len = cols.scalar("output_len").astype(np.int64)
    expected = cols.scalar("router_prefix_hit_tokens").astype(np.int64)
    decided = ~np.isnan(cols.scalar("router_scrape_age_s").astype(np.float64))
    seen = int(backend.max()) + 1 if len(backend) else 0
    if names is not None and seen > len(names):
        raise ValueError(
            f"records name backend index {seen - 1} but the fleet has {len(names)} "
            f"backends ({', '.join(names)})"
        )
    size = len(names) if names is not None else seen
    engines = list(counters.backends) if counters is not None else []
    if engines and len(engines) != size:
        raise ValueError(f"the unit's counters cover {len(engines)} backends but the fleet has {size}")
    sent = backend >= 0
    counts = np.bincount(backend[sent], minlength=size)
    total = int(counts.sum())
    ok = status == "ok"
    rows = []
    for b in range(size):
        mine = backend == b
        mine_ok = mine & ok
        eng = engines[b] if engines else None
        uncached = (eng.prefix_queries - eng.prefix_hits) if eng is not None else math.nan
        if uncached != uncached:
            # A backend that did not report its hit (-1) is counted as having computed all.
            uncached = float(np.maximum(in_len[mine] - np.maximum(cached[mine], 0), 0).sum())
        known = mine_ok & decided
        rows.append({
            "backend": b,
            "name": names[b] if names is not None else f"backend-{b}",
            "requests": int(counts[b]),
            "share": float(counts[b] / total) if total else math.nan,
            "peak_inflight": peak_concurrency(dispatch[mine], finish[mine]),
            "work_tokens": float(uncached + out_len[mine].sum()),
            "prefix_queries": eng.prefix_queries if eng is not None else math.nan,
            "prefix_hits": eng.prefix_hits if eng is not None else math.nan,
            "hit_rate": eng.hit_rate if eng is not None else math.nan,
            "expected_hit_rate": _ratio(expected[known].sum(), in_len[known].sum()),
            "served_hit_rate": _served_hit_rate(cached[mine_ok], in_len[mine_ok]),
        })
    work_total = sum(r["work_tokens"] for r in rows)
    for r in rows:
        r["work_share"] = r["work_tokens"] / work_total if work_total > 0 else math.nan
    return [{k: r[k] for k in BACKEND_COLUMNS} for r in rows]


def peak_concurrency(start: np.ndarray, end: np.ndarray) -> int:
    """Most intervals ``[start, end)`` open at once (an end before a start at ties)."""
    times, deltas = _events(start, end)
    return int(np.cumsum(deltas).max()) if len(deltas) else 0


def inflight_series(start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The in-flight count as a step function: after ``times[i]`` it is ``level[i]``."""
    times, deltas = _events(start, end)
    if len(times) == 0:
        return times, deltas
    level = np.cumsum(deltas)
    # Keep the last event at each instant (the level after all of them).
    last = np.r_[times[1:] != times[:-1], True]
    return times[last], level[last]


def _events(start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    start = np.asarray(start, dtype=np.float64)
    end = np.asarray(end, dtype=np.float64)
    keep = np.isfinite(start) & np.isfinite(end)
    start, end = start[keep], end[keep]
    times = np.concatenate([start, end])
    deltas = np.concatenate([np.ones(len(start), np.int64), -np.ones(len(end), np.int64)])
    order = np.lexsort((deltas, times))  # by time, then -1 before +1
    return times[order], deltas[order]


# --- column access --------------------------------------------------------------


class _Columns:
    """Uniform numpy access to records given as Arrow, pandas or dataclasses."""

    def __init__(self, table: pa.Table | None, frame: pd.DataFrame | None) -> None:
        self.table, self.frame = table, frame

    @classmethod
    def of(cls, records: Any, itl: bool = True) -> _Columns:
        if isinstance(records, pa.Table):
            obj: Any = records
        elif isinstance(records, pd.DataFrame):
            obj = records
        else:
            obj = to_table(records)
        names = obj.column_names if isinstance(obj, pa.Table) else list(obj.columns)
        missing = [c for c in _NEEDED if c not in names and (itl or c not in _ITL_COLUMNS)]
        if missing:
            raise ValueError(f"records lack columns: {', '.join(missing)}")
        if isinstance(obj, pa.Table):
            return cls(obj, None)
        return cls(None, obj)

    def has(self, name: str) -> bool:
        if self.table is not None:
            return name in self.table.column_names
        return name in self.frame.columns

    def scalar(self, name: str) -> np.ndarray:
        if self.table is not None:
            col = self.table.column(name)
            if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
                return col.to_numpy(zero_copy_only=False)
            return col.to_numpy()
        return self.frame[name].to_numpy()

    def itl(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The ITL runs of the rows in ``mask``, flattened."""
        if self.table is not None:
            sub = self.table.select(["itl_start", "itl_step", "itl_count"])
            if not mask.all():  # filtering copies the columns: only when some rows go
                sub = sub.filter(pa.array(mask))
            return tuple(  # type: ignore[return-value]
                pc.list_flatten(sub.column(c)).to_numpy() for c in ("itl_start", "itl_step", "itl_count")
            )
        out = []
        for c in ("itl_start", "itl_step", "itl_count"):
            parts = [np.asarray(x) for x in self.frame[c].to_numpy()[mask] if x is not None and len(x)]
            out.append(np.concatenate(parts) if parts else np.zeros(0))
        return out[0], out[1], out[2]
