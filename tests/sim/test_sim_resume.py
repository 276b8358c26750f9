"""Resuming sweeps and ``python -m sim``'s input errors: refusals that name the changed
key, record files that do not read back, workers that die, options checked up front."""
from __future__ import annotations

import os
import signal
import time

import pytest

from results.records import read_records
from sim.cli import main
from sim.workers import WorkerPool, describe_exit
from test_sim_sweep import write_scenario

PATTERN = "records/point=*/strategy=*/seed=*.parquet"


def test_a_refused_resume_names_the_key_that_changed(tmp_path, capsys):
    scenario = write_scenario(tmp_path, rates="4.0")
    out = tmp_path / "run"
    assert main([str(scenario), "--out", str(out), "--workers", "1", "--quiet",
                 "--set", "cluster.groups.gpu.count=2"]) == 0
    capsys.readouterr()
    assert main([str(scenario), "--out", str(out), "--resume", "--quiet",
                 "--set", "arrivals.rate=5.0", "--seeds", "0,1,2"]) == 2
    err = capsys.readouterr().err
    assert "arrivals.rate: 4.0 -> 5.0" in err
    assert "seeds: [0, 1] -> [0, 1, 2]" in err
    # the override the run started with and this resume lacks, in --set's spelling
    assert "cluster.groups.gpu.count: 2 -> 3" in err


def _corrupt(path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:  # overwritten in the middle: the footer still reads, the data pages do not
        # The pages of the status column (text, compressed): overwriting raw float
        # pages (stored uncompressed by zstd) would read back as garbage, not fail.
        import pyarrow.parquet as pq

        chunk = pq.ParquetFile(path).metadata.row_group(0)
        col = next(chunk.column(c) for c in range(chunk.num_columns)
                   if chunk.column(c).path_in_schema == "status")
        mid = col.dictionary_page_offset or col.data_page_offset
        size = col.total_compressed_size
        path.write_bytes(data[:mid] + (bytes(range(256)) * (size // 256 + 1))[:size] + data[mid + size:])


@pytest.mark.parametrize("how", ["truncated", "overwritten"])
def test_a_unit_whose_file_does_not_read_back_is_redone(tmp_path, capsys, how):
    scenario = write_scenario(tmp_path, rates="4.0", n=400)
    out = tmp_path / "run"
    assert main([str(scenario), "--out", str(out), "--workers", "1", "--quiet"]) == 0
    files = sorted(out.glob(PATTERN))
    victim = files[1]
    good = read_records(victim).to_pandas()
    _corrupt(victim, how)
    capsys.readouterr()
    code = main([str(scenario), "--out", str(out), "--resume", "--workers", "1", "--quiet"])
    err = capsys.readouterr().err
    if how == "truncated":
        # noticed before the sweep: the unit is redone at once
        assert code == 0
        assert str(victim) in err and "did not read back" in err
        assert victim.exists() and victim.with_name(victim.name + ".unreadable").exists()
    else:
        # noticed only when its data is read (the summary): set aside, named, and the
        # next --resume redoes it
        assert victim.with_name(victim.name + ".unreadable").exists() and not victim.exists()
        failure = next((out / "failures").glob("*.txt")).read_text()
        assert str(victim) in failure and "--resume" in failure
        assert code == 1 and "--resume" in err
        assert main([str(scenario), "--out", str(out), "--resume", "--workers", "1", "--quiet"]) == 0
    redone = read_records(victim).to_pandas()
    assert len(redone) == len(good)
    assert (redone["finish_s"].to_numpy() == good["finish_s"].to_numpy()).all()
    assert not list((out / "failures").glob("*.txt"))


@pytest.mark.parametrize("args, message", [
    (["--workers", "0"], "--workers: must be >= 1"),
    (["--workers", "-1"], "--workers: must be >= 1"),
    (["--workers", "two"], "--workers: expected a whole number"),
])
def test_bad_worker_counts_are_refused(tmp_path, capsys, args, message):
    scenario = write_scenario(tmp_path, rates="4.0")
    with pytest.raises(SystemExit) as exc:
        main([str(scenario), "--out", str(tmp_path / "run"), *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_out_pointing_at_a_file_is_an_error_line(tmp_path, capsys):
    scenario = write_scenario(tmp_path, rates="4.0")
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    assert main([str(scenario), "--out", str(target), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out") and "is a file" in err and "Traceback" not in err
    assert target.read_text() == "mine"


def test_an_unknown_objective_fails_before_the_sweep(tmp_path, capsys):
    scenario = write_scenario(tmp_path, rates="4.0")
    out = tmp_path / "run"
    started = time.perf_counter()
    assert main([str(scenario), "--out", str(out), "--quiet", "--objective", "p42_ttft"]) == 2
    err = capsys.readouterr().err
    assert "error: --objective" in err and "'p42_ttft'" in err and "p99_ttft_ms" in err
    assert not out.exists(), "nothing may run (or be created) for a bad objective"
    assert time.perf_counter() - started < 10


# --- the worker pool -------------------------------------------------------------------------
def _job(task, emit):
    """A task: emit its items; ``("die", n)`` kills its own process after n items."""
    kind, n = task
    for i in range(n):
        emit((kind, i))
    if kind == "die":
        os.kill(os.getpid(), signal.SIGKILL)


def test_a_worker_that_dies_is_reported_and_replaced_and_the_others_finish():
    items, lost = [], []
    pool = WorkerPool(2, _job)
    pool.run([("ok", 3), ("die", 2), ("ok", 4), ("ok", 1)], items.append,
             lambda task, why: lost.append((task, why)))
    assert sorted(items) == sorted([("ok", i) for i in range(3)] + [("die", 0), ("die", 1)]
                                   + [("ok", i) for i in range(4)] + [("ok", 0)])
    assert lost == [(("die", 2), "the worker process killed by SIGKILL (out of memory? the "
                                 "kernel's OOM killer sends SIGKILL)")]
    assert pool.workers == []


def test_exit_statuses_in_words():
    assert describe_exit(1) == "exited with status 1"
    assert describe_exit(-signal.SIGTERM) == "killed by SIGTERM"
    assert describe_exit(None) == "still running"


def test_a_trace_too_large_for_memory_is_an_error_line(tmp_path, capsys):
    scenario = write_scenario(tmp_path, rates="4.0")
    out = tmp_path / "run"
    assert main([str(scenario), "--out", str(out), "--quiet",
                 "--set", "num_requests=1000000000000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "num_requests: 1,000,000,000,000 requests need" in err
    assert "Traceback" not in err and not out.exists()
