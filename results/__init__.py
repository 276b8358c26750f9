"""Request records, metrics as ``vllm bench serve`` defines them, reports.

The light parts (records, run directory, metrics, statistics, summaries) import
eagerly; ``build_report`` (altair, vl-convert) loads on first use so the
simulator importing ``results.records`` stays fast.
"""
from results.metrics import METRICS, UnitMetrics, unit_metrics
from results.records import SCHEMA, SCHEMA_VERSION, RequestRecord, read_records, write_records
from results.rundir import NotARunDirectory, RunDir, Unit, load_run
from results.stats import aggregate, rank_agreement, rank_strategies
from results.summary import RunSummary, build_summary, format_table, summarize_run

__all__ = [
    "METRICS", "SCHEMA", "SCHEMA_VERSION", "NotARunDirectory", "RequestRecord", "RunDir",
    "RunSummary", "Unit", "UnitMetrics", "aggregate", "build_report", "build_summary",
    "format_table", "load_run", "rank_agreement", "rank_strategies", "read_records",
    "summarize_run", "unit_metrics", "write_records",
]


def __getattr__(name: str):
    if name == "build_report":
        from results.report import build_report

        return build_report
    raise AttributeError(f"module 'results' has no attribute {name!r}")
