"""Does the engine run at the speed it was profiled at? Measured before each check, and waited for on request.

Why: on a shared VM the host's speed moves in steps of 5-8% that hold for minutes
(docs/calibration.md, "Waiting for the host's speed"). At 80% of capacity a step
model a few percent off moves the p90s by three times as much, so a check that
starts while the host runs at another speed than during profiling measures the host,
not the profile.

The gate needs no model. It sends a few identical *reference requests* (the check's:
512 prompt tokens, 32 out, unique prompts, one at a time) to the idle engine and
divides their median E2EL by the same requests' median measured at the start and end
of profiling (the baseline). Within ``tolerance`` of 1 the check starts; otherwise it
waits ``interval_s`` and tries again, for at most ``max_wait_s``, and then starts
anyway with the record saying the speed was not reached. The record of every try is
kept beside the check (``speed-gate.json``). The gate never looks at a check's errors,
so it cannot pick the checks that pass.

The default waits not at all: it measures once and records. In its first campaign
(2026-12-05g) the idle engine ran 3-12% faster before every check than while profiled,
while the checks' loaded steps ran 0.95-1.08x the fitted model, so waiting for the idle
speed chose nothing that mattered (docs/calibration.md, "Waiting for the host's speed").
"""
from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from calibrate.backend import probe_backend
from calibrate.check import CheckSettings, reference_unit
from calibrate.machine import utc_now
from calibrate.modeldir import TOKENIZER_VOCAB_SIZE
from calibrate.probe import Runner
from live.transport.client import make_session

#: Request ids of the gate's requests (the check's own start at 1,000,000 and 2,000,000).
GATE_FIRST_ID = 3_000_000

#: ``measure()`` -> one reference measurement: {"e2el_s", "ttft_s", "tpot_s", "requests", "utc"}.
Measure = Callable[[], Awaitable[dict]]


@dataclass(frozen=True)
class GateSettings:
    #: Largest |E2EL ratio - 1| at which a check may start; 0 turns the gate off.
    tolerance: float = 0.03
    #: Longest wait for the speed, in seconds; then the check starts anyway. 0: measure once and
    #: record, never wait (the default: in its first campaign the idle engine's speed did not
    #: predict the check's, docs/calibration.md, "Waiting for the host's speed").
    max_wait_s: float = 0.0
    #: Seconds between two tries.
    interval_s: float = 20.0

    def __post_init__(self) -> None:
        if not 0 <= self.tolerance < 1:
            raise ValueError(f"speed gate tolerance must be in [0, 1) (0: no gate), got {self.tolerance}")
        if self.max_wait_s < 0:
            raise ValueError(f"speed gate max_wait_s must be >= 0, got {self.max_wait_s}")
        if self.interval_s <= 0:
            raise ValueError(f"speed gate interval_s must be > 0, got {self.interval_s}")

    @property
    def on(self) -> bool:
        return self.tolerance > 0


async def reference_latency(url: str, settings: CheckSettings | None = None) -> dict:
    """Median latencies of the check's reference requests (``calibrate.check.reference_unit``:
    the same requests its probes send) sent one at a time to ``url``."""
    s = settings or CheckSettings()
    async with make_session(concurrency=4) as session:
        info = await probe_backend(session, url)
        salt = int(np.random.default_rng().integers(1, 1 << 31))  # fresh prompts: no prefix hit
        async with Runner(session, info.url, "speed-gate", TOKENIZER_VOCAB_SIZE,
                          info.block_size if info.block_size > 0 else 16,
                          num_kv_blocks=info.num_kv_blocks, salt=salt, model=info.model) as runner:
            rows = await runner.run_unit(reference_unit("speed-gate", GATE_FIRST_ID, s))
    ok = [r for r in rows if r.get("ok")]
    if not ok:
        errors = sorted({str(r.get("error")) for r in rows})
        raise RuntimeError(f"no reference request to {url} succeeded: {'; '.join(errors)}")
    return {**{m: float(np.median([r[m] for r in ok])) for m in ("e2el_s", "ttft_s", "tpot_s")},
            "requests": len(ok), "utc": utc_now()}


def baseline_e2el(profiling: dict | None) -> float:
    """The profiling's reference E2EL: the mean of its measurements ("before", "after"); NaN without."""
    vals = [m.get("e2el_s", math.nan) for m in (profiling or {}).values() if isinstance(m, dict)]
    vals = [v for v in vals if isinstance(v, (int, float)) and math.isfinite(v) and v > 0]
    return float(np.mean(vals)) if vals else math.nan


async def wait_for_speed(measure: Measure, baseline_s: float, settings: GateSettings, *,
                         say: Callable[[str], None] = print,
                         sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                         clock: Callable[[], float] = time.monotonic) -> dict:
    """Measure until the engine's reference E2EL is within tolerance of ``baseline_s``, or the wait is over.

    Returns the record: the baseline, every try (its E2EL and ratio), the seconds waited,
    and ``within`` (whether the last try was within tolerance; None when the gate is
    off or there is no baseline, and nothing was measured)."""
    record = {"baseline_e2el_s": baseline_s, "tolerance": settings.tolerance,
              "max_wait_s": settings.max_wait_s, "tries": [], "waited_s": 0.0, "within": None}
    if not settings.on or not (math.isfinite(baseline_s) and baseline_s > 0):
        record["skipped"] = "gate off" if not settings.on else "no reference measured at profiling"
        return record
    t0 = clock()
    while True:
        m = await measure()
        ratio = m["e2el_s"] / baseline_s
        record["tries"].append({**m, "ratio": ratio})
        record["waited_s"] = clock() - t0
        record["within"] = abs(ratio - 1) <= settings.tolerance
        if record["within"]:
            return record
        if record["waited_s"] + settings.interval_s > settings.max_wait_s:
            if settings.max_wait_s > 0:
                say(f"the engine still ran {ratio:.3f}x its profiling speed after {record['waited_s']:.0f} s; "
                    "starting anyway")
            return record
        say(f"the engine runs {ratio:.3f}x its profiling speed (tolerance {settings.tolerance:.0%}); "
            f"trying again in {settings.interval_s:.0f} s")
        await sleep(settings.interval_s)


def describe(record: dict | None) -> str:
    """One cell: the last try's ratio, the wait if there was one, and whether it was outside the
    tolerance ("1.01x", "0.95x, outside 3%", "1.06x after 4.0 min, outside 3%")."""
    if not record or not record.get("tries"):
        return "n/a"
    text = f"{record['tries'][-1]['ratio']:.2f}x"
    if len(record["tries"]) > 1:
        text += f" after {record['waited_s'] / 60:.1f} min"
    if record.get("within") is False:
        text += f", outside {record['tolerance']:.0%}"
    return text
