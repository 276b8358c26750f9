"""Real chat traffic as a columnar ``Trace``: datasets, tokenization, arrivals.

Entry point: ``build_trace(workload_table, arrivals_table, seed=..., num_requests=...)``.
"""
from workload.build import build_trace
from workload.trace import Trace

__all__ = ["Trace", "build_trace"]
