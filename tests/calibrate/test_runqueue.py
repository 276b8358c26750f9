"""The server processes' run and run-queue wait (Linux schedstat), by hand and on real processes."""
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from calibrate.procstat import process_table, tree_pids
from calibrate.runqueue import difference, format_runqueue, process_schedstat, snapshot

HAS_SCHEDSTAT = Path("/proc/self/schedstat").is_file() and hasattr(os, "sched_setaffinity")


def test_the_difference_keeps_processes_alive_at_both_snapshots_that_ran():
    before = {1: ("python", {1: (1.0, 0.1), 2: (0.5, 0.0)}), 2: ("idle", {2: (5.0, 0.0)}),
              4: ("gone", {4: (1.0, 1.0)}), 5: ("VLLM::Worker", {5: (0.0, 0.0), 6: (0.0, 0.0), 8: (0.0, 0.0)})}
    after = {1: ("python", {1: (3.0, 0.6), 2: (0.5, 0.0)}), 2: ("idle", {2: (5.005, 0.0)}),
             3: ("new", {3: (9.0, 9.0)}),
             # the compute thread, an idle helper that waited long for each short wake-up, and a
             # thread born after the first snapshot (left out: its start is unknown)
             5: ("VLLM::Worker", {5: (4.0, 0.04), 6: (0.1, 0.6), 7: (2.0, 2.0)})}
    got = difference(before, after)
    assert list(got) == ["VLLM::Worker[5]", "python[1]"]  # busiest first; "idle" ran 5 ms, "new" had no start
    assert got["python[1]"] == {"run_s": 2.0, "wait_s": 0.5, "wait_share": 0.25,
                                "main_run_s": 2.0, "main_wait_s": 0.5, "main_wait_share": 0.25}
    worker = got["VLLM::Worker[5]"]
    assert worker["run_s"] == 4.1 and worker["wait_s"] == 0.64  # the helper inflates the total ...
    assert worker["main_run_s"] == 4.0 and worker["main_wait_share"] == 0.01  # ... not the compute thread


def test_a_tree_is_its_root_and_every_descendant():
    table = {1: (0, 0.0), 10: (1, 0.0), 11: (10, 0.0), 12: (10, 0.0), 20: (2, 0.0), 21: (11, 0.0)}
    assert tree_pids(10, table) == [10, 11, 12, 21]
    assert tree_pids(99, table) == []


def test_a_process_sums_its_threads_schedstat(tmp_path):
    pid = tmp_path / "42"
    (pid / "task" / "42").mkdir(parents=True)
    (pid / "task" / "43").mkdir()
    (pid / "stat").write_text("42 (VLLM::EngineCor) S 1 42 42 0 -1 ...\n")
    (pid / "task" / "42" / "schedstat").write_text("2000000000 500000000 100\n")
    (pid / "task" / "43" / "schedstat").write_text("1000000000 250000000 7\n")
    assert process_schedstat(42, tmp_path) == ("VLLM::EngineCor", {42: (2.0, 0.5), 43: (1.0, 0.25)})
    assert process_schedstat(7, tmp_path) is None  # ended


def test_the_lines_name_each_loads_busiest_processes():
    text = format_runqueue({"poisson-50": {"VLLM::Worker[9]": {"run_s": 150.0, "wait_s": 9.0, "wait_share": 0.06,
                                                               "main_run_s": 144.7, "main_wait_s": 2.9,
                                                               "main_wait_share": 0.02},
                                           "python[7]": {"run_s": 9.4, "wait_s": 4.0, "wait_share": 0.43,
                                                         "main_run_s": 7.4, "main_wait_s": 3.4,
                                                         "main_wait_share": 0.456}},
                            "burst": {}})
    assert "VLLM::Worker[9] ran 144.7 s, waited 2.0% of that" in text and "python[7] ran 7.4 s, waited 45.6%" in text
    assert "burst" in text and "no process ran" in text
    assert format_runqueue(None) == "" and format_runqueue({}) == ""


def _spin(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def _two_spinners_on_one_core(core, seconds):
    os.sched_setaffinity(0, {core})
    ctx = multiprocessing.get_context("fork")
    kids = [ctx.Process(target=_spin, args=(seconds,)) for _ in range(2)]
    for k in kids:
        k.start()
    for k in kids:
        k.join()


@pytest.mark.skipif(not HAS_SCHEDSTAT, reason="needs Linux schedstat and CPU affinity")
def test_two_busy_processes_sharing_one_core_each_wait_about_as_long_as_they_run():
    # A real tree: a parent pinned to one core and two children spinning on it. Each child
    # is runnable all the time but holds the core only about half of it.
    core = min(os.sched_getaffinity(0))
    ctx = multiprocessing.get_context("fork")
    parent = ctx.Process(target=_two_spinners_on_one_core, args=(core, 1.0))
    parent.start()
    try:
        deadline = time.monotonic() + 10
        while len(tree_pids(parent.pid, process_table())) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        before = snapshot(parent.pid)
        time.sleep(0.6)
        after = snapshot(parent.pid)
    finally:
        parent.join(timeout=30)
    got = difference(before, after)
    children = [v for k, v in got.items() if v["run_s"] > 0.05]
    assert len(children) == 2, got
    for child in children:
        assert child["wait_share"] > 0.4, got  # alone on the core it would be near 0
    assert sum(c["run_s"] for c in children) <= 0.6 * 1.15  # one core: at most the wall time between them

