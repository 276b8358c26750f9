"""Model files: safe formats only, clear failures on version, kind and garbage."""
from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pytest
from predictor_helpers import fitted, known_rows

from predictors import ModelFileError, load_model, make_model, read_header, save_model

ROOT = Path(__file__).resolve().parents[2]
_UNPICKLED: list[str] = []


def _record_unpickling() -> str:
    _UNPICKLED.append("ran")
    return "ran"


class _Booby:
    """Unpickling this object runs ``_record_unpickling``: a stand-in for hostile code."""

    def __reduce__(self):
        return (_record_unpickling, ())


def test_no_pickle_anywhere_in_the_code():
    sources = list((ROOT / "predictors").glob("*.py")) + [ROOT / "routing/strategies/predictive.py"]
    forbidden = re.compile(
        r"^\s*(import|from)\s+(pickle|joblib|dill|cloudpickle)\b"
        r"|torch\.(load|save)\(|allow_pickle\s*=\s*True|(?<![.\w])eval\("
    )
    offenders = [
        f"{p.name}:{i}" for p in sources for i, line in enumerate(p.read_text().splitlines(), 1)
        if forbidden.search(line)
    ]
    assert offenders == []


def test_a_pickle_file_is_refused_without_being_unpickled(tmp_path):
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(_Booby()))
    with pytest.raises(ModelFileError, match="not a predictor model file"):
        load_model(path)
    assert _UNPICKLED == []


def test_json_model_files_are_plain_json(tmp_path):
    path = save_model(fitted("tree"), tmp_path / "tree.json")
    data = json.loads(path.read_text())
    assert data["format"] == "vllm-routing-lab/predictor" and data["kind"] == "tree"
    assert set(data["state"]["tree"]) == {"left", "right", "feature", "threshold", "value"}


@pytest.mark.parametrize("kind", ["tree", "mlp"])
def test_other_feature_schema_version_fails_clearly(kind, tmp_path):
    path = save_model(fitted(kind), tmp_path / kind)
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        data["feature_schema_version"] = 2
        path.write_text(json.dumps(data))
    else:
        from safetensors import safe_open
        from safetensors.numpy import save_file

        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        header = json.loads(meta["predictor"])
        header["feature_schema_version"] = 2
        save_file(tensors, str(path), metadata={"predictor": json.dumps(header)})
    with pytest.raises(ModelFileError) as info:
        load_model(path)
    message = str(info.value)
    assert "feature schema version 2" in message and "uses 1" in message and "retrain" in message


def test_loading_as_another_kind_fails_clearly(tmp_path):
    path = save_model(fitted("tree"), tmp_path / "tree")
    with pytest.raises(ModelFileError, match="holds a 'tree' model, expected a 'online_linear' model"):
        load_model(path, kind="online_linear")


def test_unknown_kind_in_a_file_names_the_known_ones(tmp_path):
    path = save_model(fitted("linear"), tmp_path / "lin")
    data = json.loads(path.read_text())
    data["kind"] = "xgboost"
    path.write_text(json.dumps(data))
    assert read_header(path)["kind"] == "xgboost"
    with pytest.raises(ModelFileError, match="unknown model kind 'xgboost'; available: linear, tree"):
        load_model(path)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "not a predictor model file"),
        (b"{not json", "not a valid JSON model file"),
        (b'{"format": "something-else"}', "no 'vllm-routing-lab/predictor' format tag"),
        (b"\x00\x01\x02garbage", "not a predictor model file"),
    ],
)
def test_garbage_files_fail_clearly(tmp_path, content, message):
    path = tmp_path / "m.json"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match=re.escape(message)):
        load_model(path)


def test_missing_file_and_wrong_suffix(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "nope.json")
    with pytest.raises(ModelFileError, match=r"tree models are saved as \.json files"):
        save_model(fitted("tree"), tmp_path / "tree.safetensors")
    with pytest.raises(ModelFileError, match="cannot save an unfitted linear model"):
        save_model(make_model("linear"), tmp_path / "x")


def test_a_tampered_tree_is_refused(tmp_path):
    path = save_model(fitted("tree"), tmp_path / "tree")
    data = json.loads(path.read_text())
    data["state"]["tree"]["feature"][0] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="feature index outside"):
        load_model(path)


def test_a_safetensors_file_without_our_header_is_refused(tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    path = tmp_path / "other.safetensors"
    save_file({"w": np.zeros(3, dtype=np.float32)}, str(path))
    with pytest.raises(ModelFileError, match="without a predictor header"):
        load_model(path)


def test_loaded_model_keeps_predicting_on_new_groups_only_when_it_knows_them(tmp_path):
    model = load_model(save_model(fitted("linear"), tmp_path / "lin"))
    rows = known_rows(3, seed=0).assign(group="tpu")
    with pytest.raises(ValueError, match="'tpu' unknown to this model"):
        model.predict(rows)
