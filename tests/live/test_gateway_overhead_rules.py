"""The gateway-overhead benchmark's rules: fast fixed-step backends, and no report over saturation.

The benchmark itself (``benchmarks/gateway_overhead.py``) is run by hand; here its
summary is fed made-up segments (so the refusal is checked without a busy machine)
and the emulator's ``--fixed-step`` mode is checked to be what it claims.
"""
from __future__ import annotations

import pytest
from benchmark_scripts import load_benchmark
from live_helpers import arun

from live.emulator.cli import build_parser, build_server
from live.transport.client import make_session, stream_completion
from live.transport.http import serving


def bench():
    return load_benchmark("gateway_overhead")


def segment(target: str, ttft_ms: list[float], rate: float = 50.0, policy: str = "round_robin",
            ok: int | None = None) -> dict:
    n = len(ttft_ms)
    return {"target": target, "rate": rate, "policy": policy, "ttft_ms": ttft_ms,
            "sent": n, "ok": n if ok is None else ok, "cpu_s": 0.1, "wall_s": 1.0}


def test_a_saturated_direct_path_is_refused_not_reported():
    b = bench()
    fast = [2.0] * 99 + [6.0]
    slow = [40.0] * 100  # the backends queue: p50 40 ms
    rows = [segment("direct", fast, 50), segment("gateway", [x + 0.5 for x in fast], 50),
            segment("direct", slow, 100), segment("gateway", [x + 0.5 for x in slow], 100)]
    table, refused = b.summarize(rows, [50.0, 100.0], ["round_robin"], max_p50=10.0, max_p99=50.0)
    assert refused == ["round_robin at 100 req/s: direct TTFT p50 40.0 ms > 10 ms"]
    assert "REFUSED" in table
    lines = [ln for ln in table.splitlines() if ln.startswith("round_robin ")]
    reported = [ln for ln in lines if " gateway " in ln and "req/s" not in ln]
    assert len(reported) == 1 and " 50 " in reported[0] and "0.50" in reported[0]  # added p50
    # a p99 over its bound, or a failed direct request, refuses too
    spiky = [2.0] * 95 + [80.0] * 5
    _, refused = b.summarize([segment("direct", spiky), segment("gateway", spiky)], [50.0],
                             ["round_robin"], 10.0, 50.0)
    assert refused and "p99" in refused[0]
    _, refused = b.summarize([segment("direct", fast, ok=99), segment("gateway", fast)], [50.0],
                             ["round_robin"], 10.0, 50.0)
    assert refused and "failed 1 of 100" in refused[0]


def test_fixed_step_emulator_answers_in_a_few_milliseconds():
    args = build_parser().parse_args(["--profile", "cpu-tiny", "--fixed-step", "0.001", "--port", "0"])
    server = build_server(args)
    assert server.profile.model.step_s == 0.001 and server.profile.model.token_s == 0.0
    assert server.profile.jitter_cv == 0.0 and not server.profile.front_end.enabled

    async def main():
        async with serving(server) as emu, make_session() as s:
            rs = [await stream_completion(s, emu.url, prompt=list(range(128)), max_tokens=32)
                  for _ in range(5)]
            return rs
    rs = arun(main())
    assert all(r.ok and r.output_tokens == 32 for r in rs)
    # one step per token, 1 ms each: a stream takes about 32 ms, not cpu-tiny's ~0.7 s
    assert max(r.e2el_s for r in rs) < 0.25 and min(r.ttft_s for r in rs) < 0.02
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--profile", "cpu-tiny", "--fixed-step", "x"])
    with pytest.raises(ValueError, match="--fixed-step must be >= 0"):
        build_server(build_parser().parse_args(["--profile", "cpu-tiny", "--fixed-step", "-1"]))
