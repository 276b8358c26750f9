"""The emulator's engine driver serves a profile's API-server front end as the simulator does."""
from __future__ import annotations

import asyncio
import dataclasses

import pytest

from sim.engine import EngineConfig
from sim.frontend import FrontEndModel
from sim.latency import EngineDefaults, LatencyModel, LatencyProfile
from live.emulator.driver import EngineDriver

pytestmark = pytest.mark.timeout(60)

STEP = 0.02
PROFILE = LatencyProfile("fe-test", LatencyModel(step_s=STEP, token_s=0.0), EngineDefaults(400, 16))


def _serve(front_end: FrontEndModel, arrivals: list[float], n_in: int, n_out: int):
    """Token times per request (driver clock, from its submit)."""
    async def main():
        driver = EngineDriver(dataclasses.replace(PROFILE, front_end=front_end),
                              EngineConfig(num_kv_blocks=400, block_size=16))
        driver.start()
        times: dict[int, list[float]] = {}
        done = asyncio.Event()
        finished = []

        def sink(state, last):
            times.setdefault(state.id, []).append((driver.now(), state.output))
            if last:
                finished.append(state.id)
                if len(finished) == len(arrivals):
                    done.set()

        t0 = driver.now()
        submitted = {}
        for at in arrivals:
            await asyncio.sleep(max(0.0, t0 + at - driver.now()))
            st = driver.submit(list(range(100, 100 + n_in)), n_out, sink)
            submitted[st.id] = st.arrival
        await asyncio.wait_for(done.wait(), 30)
        await driver.stop()
        return {i: [(t - submitted[i], n) for t, n in ts] for i, ts in times.items()}
    return asyncio.run(main())


def test_a_lone_request_waits_for_its_input_job_and_each_steps_output_job():
    fe = FrontEndModel(input_s=0.05, output_step_s=0.03)
    got = _serve(fe, [0.0], 32, 4)[0]
    # Input job 50 ms, prefill step 20 ms, output job 30 ms: the first token at 100 ms.
    assert got[0][0] == pytest.approx(0.10, abs=0.02)
    # Output jobs (30 ms) are slower than steps (20 ms): tokens come at the front end's pace.
    gaps = [b[0] - a[0] for a, b in zip(got, got[1:])]
    assert all(g == pytest.approx(0.03, abs=0.012) for g in gaps)
    assert [n for _, n in got] == [1, 2, 3, 4]


def test_arrivals_queue_behind_each_other_in_the_front_end():
    fe = FrontEndModel(input_s=0.08)
    got = _serve(fe, [0.0, 0.0], 32, 2)
    # Input jobs run 0-80 ms and 80-160 ms. The first request's prefill step ends at 100 ms, but its
    # output job queues behind the second input job: both of its tokens reach it at 160 ms, in order.
    # The second request enters the engine at 160 ms: its first token at 180 ms.
    assert [n for _, n in got[0]] == [1, 2] and [n for _, n in got[1]] == [1, 2]
    assert got[0][0][0] == pytest.approx(0.16, abs=0.02) and got[0][1][0] == pytest.approx(0.16, abs=0.02)
    assert got[1][0][0] == pytest.approx(0.18, abs=0.02)
