"""Our metrics agree with `vllm bench serve`'s formulas applied to the same timings.

``vllm_calculate_metrics`` below is a small, independent re-implementation of the
loop in vLLM's ``vllm/benchmarks/serve.py::calculate_metrics`` as documented
there: per successful request it keeps ``ttft``, ``latency`` (to the last
chunk), the list of chunk gaps ``itl`` and the token count; TPOT is
``(latency - ttft) / (output_len - 1)`` when ``output_len > 1`` (0 for goodput
otherwise); a request is good when ``slo / 1000 >= metric`` for every SLO given;
throughputs divide by ``dur_s``; every statistic is ``np.mean``, ``np.std``,
``np.median`` or ``np.percentile`` of a plain Python list. The request timings
come from per-request chunk timestamps, exactly as vLLM's client records them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from results.itl_stats import pooled_itl_stats
from results.metrics import unit_metrics
from results.records import RequestRecord
from sim.itl import ItlEncoder


@dataclass
class Output:  # the fields of vLLM's RequestFuncOutput that calculate_metrics reads
    success: bool
    prompt_len: int
    output_tokens: int = 0
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)


def vllm_calculate_metrics(outputs, dur_s, percentiles, goodput):
    completed = good = total_input = 0
    out_lens, itls, tpots, all_tpots, ttfts, e2els = [], [], [], [], [], []
    for o in outputs:
        if o.success:
            out_lens.append(o.output_tokens)
            total_input += o.prompt_len
            tpot = 0
            if o.output_tokens > 1:
                tpot = (o.latency - o.ttft) / (o.output_tokens - 1)
                tpots.append(tpot)
            all_tpots.append(tpot)
            itls += o.itl
            ttfts.append(o.ttft)
            e2els.append(o.latency)
            completed += 1
        else:
            out_lens.append(0)
    if goodput:
        valid, slos = [], []
        for key, values in (("ttft", ttfts), ("tpot", all_tpots), ("e2el", e2els)):
            if key in goodput:
                valid.append(values)
                slos.append(goodput[key] / 1000)
        for req in zip(*valid):
            if all(s >= r for s, r in zip(slos, req)):
                good += 1
    res = {
        "completed": completed, "total_input_tokens": total_input,
        "total_output_tokens": sum(out_lens), "request_throughput": completed / dur_s,
        "request_goodput": good / dur_s, "output_throughput": sum(out_lens) / dur_s,
        "total_token_throughput": (total_input + sum(out_lens)) / dur_s,
    }
    for name, xs in (("ttft", ttfts), ("tpot", tpots), ("itl", itls), ("e2el", e2els)):
        res[f"mean_{name}_ms"] = np.mean(xs or 0) * 1000
        res[f"std_{name}_ms"] = np.std(xs or 0) * 1000
        res[f"median_{name}_ms"] = np.median(xs or 0) * 1000
        for p in percentiles:
            res[f"p{p}_{name}_ms"] = np.percentile(xs or 0, p) * 1000
    return res


def simulate_client(seed: int, n: int = 60):
    """Per request: send time and chunk arrival timestamps; some requests fail."""
    rng = np.random.default_rng(seed)
    sends = np.sort(rng.uniform(0, 10, n))
    outputs, records = [], []
    for i, st in enumerate(sends):
        st = float(st)
        prompt = int(rng.integers(5, 500))
        fail = rng.random() < 0.15
        chunks = int(rng.integers(1, 30))
        # chunk timestamps: first after a TTFT, then gaps; sometimes >1 token per chunk
        stamps = st + float(rng.exponential(0.3)) + np.r_[0.0, np.cumsum(rng.exponential(0.03, chunks - 1))]
        tokens = chunks + int(rng.integers(0, 3)) * (rng.random() < 0.3)
        end = float(stamps[-1]) + float(rng.uniform(0, 0.01))  # [DONE] after the last chunk
        if fail:
            outputs.append(Output(False, prompt))
            status, first, last, out_len, enc = "error", float(stamps[0]), float(stamps[-1]), tokens, ItlEncoder()
        else:
            gaps = list(np.diff(stamps))
            outputs.append(Output(True, prompt, tokens, float(stamps[0]) - st, float(stamps[-1]) - st, gaps))
            enc = ItlEncoder()
            for g in gaps:
                enc.add(float(g))
            status, first, last, out_len = "ok", float(stamps[0]), float(stamps[-1]), tokens
        records.append(RequestRecord(
            experiment_id="e", point_id="p", strategy="s", seed=seed, request_id=i,
            conversation_id=str(i), turn=0, backend=i % 2, arrival_s=st, dispatch_s=st,
            first_token_s=first, last_token_s=last, finish_s=end, input_len=prompt,
            cached_tokens=0, output_len=out_len, requested_output_len=64, num_preemptions=0,
            status=status, itl_start=enc.start, itl_step=enc.step, itl_count=enc.count))
    dur = max(r.finish_s for r in records) - min(r.arrival_s for r in records)
    return outputs, records, dur


@pytest.mark.parametrize("seed", range(6))
def test_agrees_with_vllm_formulas(seed):
    outputs, records, dur = simulate_client(seed)
    goodput = {"ttft": 400.0, "tpot": 40.0, "e2el": 1200.0}
    ref = vllm_calculate_metrics(outputs, dur, (90, 95, 99), goodput)
    ours = unit_metrics(records, {f"{k}_ms": v for k, v in goodput.items()}).values
    assert ours["duration"] == pytest.approx(dur, rel=1e-12)
    for key, expected in ref.items():
        assert ours[key] == pytest.approx(expected, rel=1e-9, abs=1e-9), key
    assert 0 < ref["request_goodput"] < ref["request_throughput"]  # the SLO bites


def test_large_itl_pool_agrees_with_plain_lists():
    """Past the expansion limit the ITL statistics still equal numpy on the full list."""
    rng = np.random.default_rng(7)
    enc_runs = [(float(rng.uniform(0.01, 0.05)), float(rng.normal(0, 1e-4)), int(rng.integers(1, 200)))
                for _ in range(3000)]
    s, d, c = (np.array(x) for x in zip(*enc_runs))
    gaps = np.concatenate([a + b * np.arange(k, dtype=float) for a, b, k in enc_runs])
    stats = pooled_itl_stats(s, d, c, (50, 90, 95, 99), expand_limit=1000, candidate_limit=5000)
    for p in (50, 90, 95, 99):
        assert stats.percentiles[p] == np.percentile(gaps, p)
    assert stats.mean == pytest.approx(np.mean(gaps), rel=1e-12)
    assert stats.std == pytest.approx(np.std(gaps), rel=1e-9)
