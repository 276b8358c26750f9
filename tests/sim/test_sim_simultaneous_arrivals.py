"""Two requests reaching an idle backend at the same instant, right after a decode run."""
from __future__ import annotations

import numpy as np

import routing
from sim.cluster import simulate
from sim_helpers import fleet
from workload.trace import Trace


def test_simultaneous_arrivals_after_a_decode_run_do_not_interrupt_the_idle_wait():
    # Request 0 decodes alone (a multi-step run) and ends; 1 and 2 arrive together much later.
    # The run's "interruptible" flag used to outlive it, so the second submit interrupted the
    # backend's idle wait and the simulation crashed with simpy.Interrupt.
    n = 3
    chains = [list(range(i * 100, i * 100 + 6)) for i in range(n)]
    offsets = np.zeros(n + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(c) for c in chains])
    trace = Trace(
        request_id=np.arange(n), conversation_id=np.array([f"c{i}" for i in range(n)], dtype=object),
        turn=np.zeros(n, dtype=np.int32), input_len=np.array([100, 100, 100], dtype=np.int32),
        output_len=np.array([50, 5, 5], dtype=np.int32), arrival_s=np.array([0.0, 30.0, 30.0]),
        timestamp_s=np.full(n, np.nan), hash_offsets=offsets,
        block_hashes=np.array([h for c in chains for h in c], dtype=np.uint64), block_size=16,
    )
    for mode in ("fast", "exact"):
        records = simulate(trace, routing.build("round_robin"), fleet(1, mode=mode)).records
        assert [r.status for r in records] == ["ok", "ok", "ok"]
        assert records[1].output_len == records[2].output_len == 5
