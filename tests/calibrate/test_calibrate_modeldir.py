"""The model directory writer: shapes, config.json, tokenizer files."""
import json

import pytest
from tokenizers import Tokenizer

from calibrate.modeldir import (SHAPES, TOKENIZER_FILES, get_shape, llama_config, shape_for_served,
                               tokenizer_source, write_model_dir)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_written_directory_is_a_consistent_model(tmp_path, name):
    out = write_model_dir(name, tmp_path)
    cfg = json.loads((out / "config.json").read_text())
    shape = SHAPES[name]
    assert out.name == shape.served_name and shape_for_served(out.name) is shape
    assert cfg["architectures"] == [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[shape.architecture]]
    assert cfg["model_type"] == shape.architecture
    assert cfg["num_hidden_layers"] == shape.num_hidden_layers
    assert cfg["hidden_size"] == cfg["num_attention_heads"] * shape.head_dim
    assert cfg["num_attention_heads"] % cfg["num_key_value_heads"] == 0
    # The vocabulary must cover every id the shipped tokenizer can produce.
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert cfg["vocab_size"] == tok.get_vocab_size(with_added_tokens=True)
    for f in TOKENIZER_FILES:
        assert (out / f).read_bytes() == (tokenizer_source() / f).read_bytes()


def test_rewriting_replaces_a_stale_config(tmp_path):
    out = write_model_dir("tiny", tmp_path)
    (out / "config.json").write_text("{}")
    write_model_dir("tiny", tmp_path)
    assert json.loads((out / "config.json").read_text())["hidden_size"] == SHAPES["tiny"].hidden_size


def test_small_costs_more_per_token_than_tiny():
    def per_token_weights(s):
        kv = s.num_key_value_heads * s.head_dim
        h = s.hidden_size
        return s.num_hidden_layers * (2 * h ** 2 + 2 * h * kv + 3 * h * s.intermediate_size)
    assert per_token_weights(SHAPES["small"]) > 4 * per_token_weights(SHAPES["tiny"])


def test_kv_bytes_per_token_counts_keys_and_values_of_every_layer():
    s = SHAPES["tiny"]
    assert s.kv_bytes_per_token(4) == 2 * s.num_hidden_layers * s.num_key_value_heads * s.head_dim * 4


def test_unknown_shape_names_the_allowed_ones():
    with pytest.raises(ValueError, match="huge.*allowed: .*tiny"):
        get_shape("huge")


def test_config_dtype_is_recorded():
    assert llama_config(SHAPES["tiny"], "bfloat16")["torch_dtype"] == "bfloat16"


def test_the_third_shape_differs_in_architecture_and_proportions():
    mid, tiny, small = SHAPES["mid"], SHAPES["tiny"], SHAPES["small"]
    assert mid.served_name == "qwen2-mid" and shape_for_served("llama-tiny") is tiny
    cfg = json.loads(json.dumps(__import__("calibrate.modeldir", fromlist=["x"]).model_config(mid)))
    assert cfg["architectures"] == ["Qwen2ForCausalLM"] and cfg["use_sliding_window"] is False
    ratios = {s.name: s.intermediate_size / s.hidden_size for s in (mid, tiny, small)}
    assert ratios["mid"] == 3.0 and ratios["tiny"] < 3.0 and ratios["small"] < 3.0
    assert mid.num_attention_heads // mid.num_key_value_heads == 4  # 4 query heads per KV head


def test_unknown_architecture_is_refused():
    from calibrate.modeldir import ModelShape
    with pytest.raises(ValueError, match="architecture must be one of llama, qwen2"):
        ModelShape("x", 1, 64, 128, 2, 1, architecture="gpt2")
