"""The decode step per batch size, measured directly, and the matmuls' knee it points to.

A decode step of ``n`` sequences is the gap between streamed tokens while ``n``
requests decode together and nothing else runs: ``n`` requests with short unique
prompts, sent at once, timed over the window from the last first token to the
first last token (``together_gaps``). Profiling's ``decode`` phase measures it for
a range of batch sizes and writes the medians in the metadata
(``decode_steps``); ``benchmarks/decode_batch_knee.py`` does the same against any
running server.

The fit uses it to choose the knee of the matmuls' floor (``sim.latency``): the
replayed cost of the loaded units is rugged in the knee (a schedule flip moves it
more than the knee does), while these steps measure the batch curve that the knee
describes. ``knee_by_decode_steps`` picks, among the fits at each candidate knee,
the one whose decode steps match the measured ones best.

The same measurement at long context pins the decode attention. ``n`` requests
with long prompts (``DEFAULT_CONTEXT_PROMPTS``) decode together, right after ``n``
with short ones; against the short-prompt step, the extra time per step is the attention
over the extra context, ``decode_attn_s * n * (context - short context)``, with
nothing else in the difference (same batch, same matmuls). ``decode_attention``
solves it. The replayed cost cannot: on the 2026-12-04 data it left
``decode_attn_s`` 7x too small for ``tiny`` and 4x too large for ``mid``
against this direct measurement (docs/calibration.md), because in the loaded
units the attention is a small share of each step and trades against the other
per-step costs.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping

from calibrate.probe import PlannedRequest, Unit
from sim.latency import LatencyModel

PHASE = "decode"
DEFAULT_BATCHES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
#: A larger knee is taken only if it lowers the decode steps' mean relative error by more than this.
KNEE_MARGIN = 0.002
#: Fewer measured batch sizes than this cannot place a knee: the fit falls back to its replayed cost.
MIN_BATCHES = 4
#: Prompt lengths of the long-context decode units, their batch size, and their output tokens.
DEFAULT_CONTEXT_PROMPTS = (1024, 2048)
CONTEXT_BATCH = 8
CONTEXT_OUTPUT_LEN = 48


def plan_decode(next_id: Callable[[], int], batches=DEFAULT_BATCHES, prompt_len: int = 32,
                output_len: int = 96) -> list[Unit]:
    """One unit per batch size ``n``: ``n`` unique ``prompt_len``-token prompts sent at once."""
    if not batches or min(batches) < 1:
        raise ValueError(f"decode batch sizes must be >= 1, got {list(batches)}")
    if prompt_len < 1 or output_len < 8:
        raise ValueError(f"decode units need prompt_len >= 1 and output_len >= 8, "
                         f"got {prompt_len} and {output_len}")
    return [_sent_together(next_id, n, prompt_len, output_len, f"b{n}", f"b{n}")
            for n in sorted(set(int(b) for b in batches))]


def plan_decode_context(next_id: Callable[[], int], n: int = CONTEXT_BATCH, prompts=DEFAULT_CONTEXT_PROMPTS,
                        output_len: int = CONTEXT_OUTPUT_LEN) -> list[Unit]:
    """One unit per prompt length ``p``: ``n`` unique ``p``-token prompts sent at once (decode at long context)."""
    if n < 1 or not prompts or min(prompts) < 1 or output_len < 8:
        raise ValueError(f"long-context decode units need n >= 1, prompt lengths >= 1 and output_len >= 8, "
                         f"got {n}, {list(prompts)} and {output_len}")
    return [_sent_together(next_id, n, p, output_len, f"n{n}-ctx{p}", f"ctx{p}")
            for p in sorted(set(int(x) for x in prompts))]


def _sent_together(next_id: Callable[[], int], n: int, prompt_len: int, output_len: int, name: str,
                   bucket: str) -> Unit:
    """A decode unit: ``n`` unique prompts sent at once, their token times kept."""
    reqs = [PlannedRequest(next_id(), prompt_len, output_len, bucket=bucket) for _ in range(n)]
    return Unit(PHASE, name, "open", reqs, concurrency=n, keep_token_times=True)


def together_gaps(chunk_times: list[list[float]]) -> list[float]:
    """Gaps between consecutive tokens of each request, within the window where all decode.

    ``chunk_times[i]`` are request i's token arrival times on one clock. The window
    opens at the last first token and closes at the first last token; a gap counts
    if both of its tokens fall inside it.
    """
    lo = max(t[0] for t in chunk_times)
    hi = min(t[-1] for t in chunk_times)
    return [b - a for t in chunk_times for a, b in zip(t, t[1:]) if a >= lo and b <= hi]


def measure(n: int, chunk_times: list[list[float]], prompt_len: int, output_len: int) -> dict | None:
    """The record of one batch: its median step, how many gaps, the mean context mid-window."""
    if len(chunk_times) != n or any(len(t) < 2 for t in chunk_times):
        return None
    gaps = together_gaps(chunk_times)
    if not gaps:
        return None
    return {"n": n, "step_s": statistics.median(gaps), "gaps": len(gaps),
            "context": prompt_len + output_len // 2}


def measured_steps(meta: Mapping) -> dict[int, dict]:
    """Batch size -> record, from profiling metadata (empty without a decode phase)."""
    steps = meta.get("decode_steps") or {}
    return {int(k): v for k, v in steps.items() if v and math.isfinite(v.get("step_s", math.nan))}


def measured_context_steps(meta: Mapping) -> list[dict]:
    """The long-context decode records (``measure``'s), from profiling metadata (empty without them)."""
    steps = meta.get("decode_context_steps") or {}
    return [v for _, v in sorted(steps.items(), key=lambda kv: int(kv[0]))
            if v and math.isfinite(v.get("step_s", math.nan))]


def decode_attention(records: list[dict], short: Mapping[int, dict] | None = None) -> dict | None:
    """``decode_attn_s`` from decode steps of one batch size at several contexts.

    Per batch size the record of least context is the base (measured minutes
    apart from the others, so a machine whose speed drifts between phases does
    not enter the difference); a batch size with a single record takes its base
    from ``short`` (the decode phase's steps). Least squares through the origin of
    (extra step time) on (``n`` times extra context); at least 0. None when no
    record has a base of less context.
    """
    by_n: dict[int, list[dict]] = {}
    for rec in records:
        by_n.setdefault(int(rec["n"]), []).append(rec)
    pairs = []
    for n, recs in by_n.items():
        recs = sorted(recs, key=lambda r: r["context"])
        base = recs[0] if len(recs) >= 2 else (short or {}).get(n)
        for rec in recs:
            if base is None or rec["context"] <= base["context"]:
                continue
            pairs.append((n * (rec["context"] - base["context"]), rec["step_s"] - base["step_s"]))
    if not pairs:
        return None
    slope = sum(x * y for x, y in pairs) / sum(x * x for x, _ in pairs)
    return {"decode_attn_s": max(slope, 0.0), "pairs": len(pairs),
            "contexts": sorted(int(r["context"]) for r in records)}


def predicted_step(model: LatencyModel, n: int, context: int) -> float:
    """The engine step the model gives ``n`` decodes of ``context`` tokens each."""
    return model.step_time(n, n, 0.0, n * context)


def decode_error(model: LatencyModel, steps: Mapping[int, dict]) -> float:
    """Mean absolute relative error of the model's decode steps against the measured ones."""
    errs = [abs(predicted_step(model, n, int(r["context"])) / r["step_s"] - 1) for n, r in steps.items()]
    return float(sum(errs) / len(errs)) if errs else math.nan


def knee_by_decode_steps(models: Mapping[float, LatencyModel], steps: Mapping[int, dict]
                         ) -> tuple[float, dict[float, float]]:
    """The knee whose fitted model matches the measured decode steps best, and each knee's error.

    The smallest knee within ``KNEE_MARGIN`` (absolute, in mean relative error) of the
    best is kept: a larger knee must earn its place, and measurements without a flat
    start keep the linear model.
    """
    if len(steps) < MIN_BATCHES:
        raise ValueError(f"need decode steps of at least {MIN_BATCHES} batch sizes, got {len(steps)}")
    errors = {k: decode_error(m, steps) for k, m in sorted(models.items())}
    return smallest_within(errors, KNEE_MARGIN), errors


def lone_decode_offset(steps: Mapping[int, dict]) -> float | None:
    """How far the measured step of one sequence sits off the least-squares line through the
    measured batches of two and more (seconds, signed; ``sim.latency``'s ``single_row_s``
    measured directly); None without a batch of one and ``MIN_BATCHES`` - 1 larger ones."""
    larger = sorted(n for n in steps if n >= 2)
    if 1 not in steps or len(larger) < MIN_BATCHES - 1:
        return None
    x = [float(n) for n in larger]
    y = [float(steps[n]["step_s"]) for n in larger]
    mx, my = statistics.fmean(x), statistics.fmean(y)
    slope = sum((a - mx) * (b - my) for a, b in zip(x, y)) / sum((a - mx) ** 2 for a in x)
    return float(steps[1]["step_s"]) - (my + slope * (1.0 - mx))


def smallest_within(errors: Mapping[float, float], margin: float) -> float:
    """The smallest knee whose error is within ``margin`` (absolute) of the least: a larger
    knee must earn its place (also ``calibrate.step_fit.choose_knee``'s rule)."""
    best = min(errors.values())
    return next(k for k in sorted(errors) if errors[k] <= best + margin)
