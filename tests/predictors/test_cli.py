"""``python -m predictors``: synth, train, evaluate, compare, info, and its errors."""
from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from predictors.cli import build_parser, main


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "rows.csv"
    assert main(["synth", "--rows", "1500", "--out", str(path), "--seed", "3"]) == 0
    return path


def test_synth_writes_the_schema_and_targets(data):
    frame = pd.read_csv(data)
    assert len(frame) == 1500
    assert {"input_len", "group", "ttft_s", "tpot_s", "e2el_s", "output_len", "cached_tokens"} <= set(frame.columns)
    assert sorted(frame["group"].unique()) == ["a100", "h100"]


def test_train_prints_held_out_metrics_and_saves_provenance(data, tmp_path, capsys):
    out = tmp_path / "tree"
    assert main(["train", "--data", str(data), "--model", "tree", "--target", "ttft",
                 "--param", "max_depth=6", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "trained tree ttft model on 1200 rows" in text and "held-out rows: 300" in text
    for word in ("mae", "mape_pct", "r2", "overall", "<128", ">=1024", "low", "high"):
        assert word in text
    header = json.loads((tmp_path / "tree.json").read_text())
    prov = header["provenance"]
    assert prov["rows_train"] == 1200 and prov["rows_test"] == 300 and len(prov["data_sha256"]) == 64
    assert header["params"]["max_depth"] == 6 and prov["heldout"]["r2"] > 0.5


def test_quantile_train_and_evaluate_report_pinball_and_coverage(data, tmp_path, capsys):
    out = tmp_path / "p90.json"
    assert main(["train", "--data", str(data), "--model", "linear", "--target", "e2el",
                 "--quantile", "0.9", "--out", str(out)]) == 0
    capsys.readouterr()
    report = tmp_path / "report.json"
    assert main(["evaluate", "--model", str(out), "--data", str(data), "--json", str(report)]) == 0
    text = capsys.readouterr().out
    assert "300 test rows" in text and "pinball" in text and "coverage" in text
    rows = json.loads(report.read_text())
    assert rows[0]["slice"] == "overall" and rows[0]["n"] == 300
    assert 0.8 < rows[0]["coverage"] < 0.97


def test_evaluate_on_all_rows_and_on_other_data(data, tmp_path, capsys):
    out = tmp_path / "lin.json"
    main(["train", "--data", str(data), "--model", "linear", "--out", str(out)])
    other = tmp_path / "other.csv"
    main(["synth", "--rows", "400", "--out", str(other), "--seed", "9"])
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out), "--data", str(other), "--split", "all"]) == 0
    assert "400 all rows" in capsys.readouterr().out
    assert main(["evaluate", "--model", str(out), "--data", str(other)]) == 0
    assert "not the file this model was trained on" in capsys.readouterr().out


@pytest.mark.slow
def test_compare_prints_one_row_per_family_with_teacher_and_student(data, tmp_path, capsys):
    table = tmp_path / "cmp.json"
    assert main(["compare", "--data", str(data), "--models", "linear,tree,transformer,distill,online_linear",
                 "--param", "distill.teacher_epochs=2", "--param", "distill.augment=0.5",
                 "--json", str(table)]) == 0
    text = capsys.readouterr().out
    assert "1200 train / 300 held-out rows" in text
    rows = json.loads(table.read_text())
    assert [r["model"] for r in rows] == ["linear", "tree", "transformer", "distill", "online_linear"]
    roles = {r["model"]: r["role"] for r in rows}
    assert roles["transformer"] == "teacher" and roles["distill"] == "student (tree)"
    assert all(r["us_per_16"] > 0 and r["r2"] > 0.3 for r in rows)


def test_train_distill_reports_its_teacher(data, tmp_path, capsys):
    out = tmp_path / "student"
    assert main(["train", "--data", str(data), "--model", "distill", "--param", "teacher_epochs=2",
                 "--param", "augment=0.5", "--out", str(out)]) == 0
    assert "teacher (transformer, not saved) on the same rows: MAE" in capsys.readouterr().out
    heldout = json.loads((tmp_path / "student.json").read_text())["provenance"]["heldout"]
    assert set(heldout) == {"student", "teacher"} and heldout["teacher"]["n"] == 300


def test_info_prints_the_header_without_arrays(data, tmp_path, capsys):
    out = tmp_path / "mlp"
    main(["train", "--data", str(data), "--model", "mlp", "--param", "epochs=3", "--out", str(out)])
    capsys.readouterr()
    assert main(["info", str(tmp_path / "mlp.safetensors")]) == 0
    header = json.loads(capsys.readouterr().out)
    assert header["kind"] == "mlp" and header["feature_schema_version"] == 1 and "state_keys" in header


def test_errors_name_the_problem(data, tmp_path, capsys):
    broken = tmp_path / "broken.csv"
    pd.read_csv(data).drop(columns=["kv_usage", "waiting"]).to_csv(broken, index=False)
    assert main(["train", "--data", str(broken), "--model", "linear", "--out", str(tmp_path / "x")]) == 2
    assert "lacks column(s) waiting, kv_usage" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "nope.csv"), "--model", "linear", "--out", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--data", str(data), "--model", "tree", "--param", "depth=3", "--out", "x"]) == 2
    assert "no parameter(s) depth; allowed: max_depth, min_samples_leaf" in capsys.readouterr().err
    bad_model = tmp_path / "bad.json"
    bad_model.write_text("{}")
    assert main(["evaluate", "--model", str(bad_model), "--data", str(data)]) == 2
    assert "not a predictor model file" in capsys.readouterr().err
    assert main(["compare", "--data", str(data), "--models", "linear,xgb"]) == 2
    assert "unknown model kind(s) xgb" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--data", str(data), "--model", "forest", "--out", "x"])


@pytest.mark.parametrize("command", ["train", "evaluate", "dataset", "compare", "synth", "info"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([command, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert text.count("--") >= 2 or command == "info"


def test_module_entry_point():
    result = subprocess.run([sys.executable, "-m", "predictors", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for command in ("train", "evaluate", "dataset", "compare", "synth", "info"):
        assert command in result.stdout
