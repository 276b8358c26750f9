"""python -m workload: help text and a small prepare run, in a subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from workload.buckets import bucket_labels
from workload.cli import build_parser, main
from workload_helpers import REPO, WILDCHAT_JSONL


def _run(*args, tmp_path):
    env = {**os.environ, "VLLM_LAB_CACHE": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, "-m", "workload", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=180)


def test_help_lists_subcommands_and_explains_every_option(tmp_path):
    top = _run("--help", tmp_path=tmp_path)
    assert top.returncode == 0 and "prepare" in top.stdout
    sub = _run("prepare", "--help", tmp_path=tmp_path)
    assert sub.returncode == 0
    parser = build_parser()
    prepare = parser._subparsers._group_actions[0].choices["prepare"]
    for action in prepare._actions:
        if action.option_strings and action.dest != "help":
            assert action.help and len(action.help) > 15, action.dest
            assert action.option_strings[0] in sub.stdout


def test_prepare_sharegpt_offline(tmp_path):
    out = tmp_path / "processed_workload.jsonl"
    proc = _run("prepare", "--source", "sharegpt", "--out", str(out), "--limit-conversations", "15",
                "--bucket-edges", "256,1024", "--with-hashes", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) > 15
    assert set(rows[0]) == {"request_id", "conversation_id", "turn", "input_len", "output_len", "bucket",
                            "timestamp", "block_hashes"}
    labels = bucket_labels([256, 1024])
    for r in rows:
        expect = labels[0] if r["input_len"] < 256 else labels[1] if r["input_len"] < 1024 else labels[2]
        assert r["bucket"] == expect
        assert len(r["block_hashes"]) == r["input_len"] // 16 and r["timestamp"] is None
    assert [r["request_id"] for r in rows] == list(range(len(rows)))
    for label in labels + ["all"]:
        assert label in proc.stdout
    assert f"{len(rows)} requests from" in proc.stdout
    assert "tokenizing sharegpt" in proc.stderr  # the progress bar
    again = _run("prepare", "--source", "sharegpt", "--out", str(out), "--limit-conversations", "15",
                 "--no-progress", tmp_path=tmp_path)
    assert "cache hit" in again.stdout and "tokenizing" not in again.stderr


@pytest.mark.slow
def test_prepare_wildchat_with_filters(tmp_path):
    out = tmp_path / "w.jsonl"
    proc = _run("prepare", "--source", "wildchat", "--path", str(WILDCHAT_JSONL), "--out", str(out),
                "--languages", "English", "--max-turns", "1", "--no-cache", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert rows and all(r["turn"] == 0 and r["timestamp"] > 1.6e9 for r in rows)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--source", "sharegpt", "--block-size", "0"], "workload.block_size: got 0, out of range; expected an integer >= 1"),
        (["--source", "sharegpt", "--languages", "English"], "needs a source with language labels"),
        (["--source", "azure", "--path", "/nonexistent.csv"], "does not exist"),
    ],
)
def test_prepare_errors_are_one_clear_line(tmp_path, capsys, args, fragment):
    code = main(["prepare", "--out", str(tmp_path / "x.jsonl"), *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and fragment in err and "Traceback" not in err
