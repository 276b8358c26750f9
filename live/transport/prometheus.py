"""Reading Prometheus text exposition, as vLLM's ``/metrics`` serves it.

vLLM exports through ``prometheus_client``: a counter registered as
``vllm:prefix_cache_queries`` appears as the sample ``vllm:prefix_cache_queries_total``
(plus a ``..._created`` timestamp sample that is not a count), gauges appear under
their own name, and every series carries the labels ``model_name`` and ``engine``
(one label set per engine core under data parallelism). A router wants one number
per metric and backend, so counts are summed over label sets; a usage fraction is
averaged over them (summing fractions of several engines would exceed 1).

Two readers: ``sum_by_name`` is the router's hot path (a scrape every few
milliseconds), which finds sample names and values and never parses a label;
``iter_samples`` is the full parse off the hot path, done by ``prometheus_client``'s
own text parser (the library vLLM exports with).

Older vLLM names are read when the current one is absent:
``vllm:gpu_cache_usage_perc`` (before 0.9) and ``vllm:gpu_prefix_cache_*`` (before
0.9; those early versions counted blocks, not tokens).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

from routing.types import ScrapedMetrics

#: For each ``ScrapedMetrics`` field, the sample names to try, best first.
METRIC_NAMES: dict[str, tuple[str, ...]] = {
    "running": ("vllm:num_requests_running",),
    "waiting": ("vllm:num_requests_waiting",),
    "kv_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    "prefix_queries": (
        "vllm:prefix_cache_queries_total", "vllm:prefix_cache_queries",
        "vllm:gpu_prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries",
    ),
    "prefix_hits": (
        "vllm:prefix_cache_hits_total", "vllm:prefix_cache_hits",
        "vllm:gpu_prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits",
    ),
    "preemptions": ("vllm:num_preemptions_total", "vllm:num_preemptions"),
}
#: Fields that are fractions per engine: averaged, not summed, over label sets.
_AVERAGED = frozenset({"kv_usage"})
_WANTED = frozenset(n for names in METRIC_NAMES.values() for n in names)


#: Histogram bucket edges of vLLM's ``PrometheusStatLogger`` (``vllm/v1/metrics/loggers.py``).
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
               10.0, 20.0, 40.0, 80.0)
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
                           50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
ITERATION_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


def buckets_1_2_5(max_value: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to ``max_value`` (vLLM's token-count buckets)."""
    out: list[int] = []
    scale = 1
    while True:
        for m in (1, 2, 5):
            if m * scale > max_value:
                return out
            out.append(m * scale)
        scale *= 10


class MetricsParseError(ValueError):
    """A line of the exposition text is not a valid sample."""


def iter_samples(text: str) -> Iterator[tuple[str, dict[str, str], float]]:
    """Every sample in ``text`` as ``(name, labels, value)``, by ``prometheus_client``'s parser.

    The full parse (labels with escapes, ``NaN``/``+Inf``, timestamps) is for tests,
    capability checks and reports; the router's scrape reads only the samples it
    needs (``sum_by_name``). Raises ``MetricsParseError`` naming the bad line.
    """
    from prometheus_client.parser import text_string_to_metric_families

    try:
        samples = [(s.name, dict(s.labels), float(s.value))
                   for family in text_string_to_metric_families(text) for s in family.samples]
    except ValueError as exc:
        raise _locate(text, exc) from None
    yield from samples


def _locate(text: str, exc: ValueError) -> MetricsParseError:
    """The first line ``prometheus_client`` rejects on its own, named by number (error path only)."""
    from prometheus_client.parser import text_string_to_metric_families

    for lineno, line in enumerate(text.split("\n"), 1):
        if not line or line[0] == "#" or line.isspace():
            continue
        try:
            for _ in text_string_to_metric_families(line + "\n"):
                pass
        except ValueError as line_exc:
            return MetricsParseError(f"metrics line {lineno}: {line_exc} in {line!r}")
    return MetricsParseError(f"metrics text: {exc}")


def sum_by_name(text: str, names: Iterable[str] | None = None) -> dict[str, tuple[float, int]]:
    """``{sample name: (sum over label sets, number of label sets)}``.

    With ``names``, only those samples are kept (and their labels never parsed),
    which is what makes a scrape cheap enough to run every few milliseconds.
    """
    wanted = None if names is None else frozenset(names)
    out: dict[str, tuple[float, int]] = {}
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line or line[0] == "#" or line.isspace():
            continue
        name, _, rest = _split_line(line, lineno)
        if wanted is not None and name not in wanted:
            continue
        value = _parse_value(rest, line, lineno)
        total, count = out.get(name, (0.0, 0))
        out[name] = (total + value, count + 1)
    return out


def parse_scraped_metrics(text: str) -> ScrapedMetrics:
    """The router's view of one backend from its ``/metrics`` text; NaN where absent."""
    found = sum_by_name(text, _WANTED)
    values: dict[str, float] = {}
    for field_name, names in METRIC_NAMES.items():
        values[field_name] = math.nan
        for n in names:
            if n in found:
                total, count = found[n]
                values[field_name] = total / count if field_name in _AVERAGED else total
                break
    return ScrapedMetrics(**values)


def _split_line(line: str, lineno: int) -> tuple[str, str, str]:
    """``name``, the text between the braces (may be empty), and what follows."""
    brace = line.find("{")
    space = line.find(" ")
    if brace != -1 and (space == -1 or brace < space):
        name = line[:brace]
        end = _closing_brace(line, brace, lineno)
        return name, line[brace + 1:end], line[end + 1:]
    if space == -1:
        raise MetricsParseError(f"metrics line {lineno}: no value in {line!r}")
    return line[:space], "", line[space:]


def _closing_brace(line: str, start: int, lineno: int) -> int:
    end = line.find("}", start)
    # Fast path: without escapes, the first "}" closes the set when the quotes
    # before it are balanced (it is not inside a label value).
    if end != -1 and line.find("\\", start, end) == -1 and line.count('"', start, end) % 2 == 0:
        return end
    in_quote = False
    i = start + 1
    n = len(line)
    while i < n:
        c = line[i]
        if in_quote:
            if c == "\\":
                i += 2
                continue
            if c == '"':
                in_quote = False
        elif c == '"':
            in_quote = True
        elif c == "}":
            return i
        i += 1
    raise MetricsParseError(f"metrics line {lineno}: unclosed label set in {line!r}")


def _parse_value(rest: str, line: str, lineno: int) -> float:
    parts = rest.split()
    if not parts:
        raise MetricsParseError(f"metrics line {lineno}: no value in {line!r}")
    try:
        return float(parts[0])
    except ValueError:
        raise MetricsParseError(
            f"metrics line {lineno}: value {parts[0]!r} is not a number in {line!r}"
        ) from None
