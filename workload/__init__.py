"""Real chat traffic as a columnar ``Trace``: datasets, tokenization, arrivals."""
from workload.trace import Trace

__all__ = ["Trace"]
