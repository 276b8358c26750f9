"""A model's architecture as the step-time arithmetic needs it, read from a HuggingFace ``config.json``.

Everything here is a count of weights, heads and layers; nothing is measured.
``ModelArch.from_hf_config`` reads the keys of Llama, Mistral, Qwen2/3, Mixtral,
Qwen-MoE, DeepSeek-V2/V3 (MLA), gpt-oss and BLOOM configs, so a local
``config.json`` of any such model works offline. ``load_model`` resolves a name:
a shipped model (``sim.profiles.model_catalog``), a path to a ``config.json`` or
to a directory holding one, or a HuggingFace id already in the local HF cache
(nothing is downloaded).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sim.profiles.errors import DeriveError

#: Bytes per weight of each supported storage type. ``mxfp4`` is OCP's microscaling
#: FP4: 4-bit values plus one 8-bit scale per 32 (4.25 bits per weight).
DTYPE_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5,
               "mxfp4": 4.25 / 8}
#: HuggingFace ``torch_dtype`` spellings.
_HF_DTYPES = {"float32": "fp32", "float": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}


class ModelError(DeriveError):
    """A model cannot be found or its config cannot be read (names what to do)."""


@dataclass(frozen=True)
class ModelArch:
    """What sets a decoder-only transformer's cost per step (no biases or norms: <0.1%)."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_context: int
    gated_mlp: bool = True
    tie_word_embeddings: bool = False
    #: Routed experts per MoE layer (0: dense model), experts each token picks, their width.
    num_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    #: Width of the always-active shared expert(s) of a MoE layer, summed.
    shared_expert_intermediate_size: int = 0
    #: Leading layers with a dense MLP in a MoE model (DeepSeek's first_k_dense_replace).
    dense_layers: int = 0
    #: Multi-head latent attention (DeepSeek): latent ranks and head dims; 0 = ordinary attention.
    kv_lora_rank: int = 0
    q_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    qk_nope_head_dim: int = 0
    v_head_dim: int = 0
    #: Layers whose attention sees only the last ``sliding_window`` tokens.
    sliding_window: int = 0
    sliding_layers: int = 0
    #: Storage type of the checkpoint's weights, and of its routed experts when different.
    weight_dtype: str = "bf16"
    expert_dtype: str = ""
    source: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        for key in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim", "vocab_size",
                    "max_context"):
            v = getattr(self, key)
            if not (isinstance(v, int) and v >= 1):
                raise ModelError(f"model {self.name}: {key} must be a positive integer, got {v!r}")
        if self.num_experts and not (1 <= self.experts_per_token <= self.num_experts):
            raise ModelError(f"model {self.name}: experts_per_token {self.experts_per_token} must be in "
                             f"1..num_experts ({self.num_experts})")
        if self.num_experts and self.moe_intermediate_size <= 0:
            raise ModelError(f"model {self.name}: a MoE model needs moe_intermediate_size > 0")
        if not self.num_experts and self.intermediate_size <= 0:
            raise ModelError(f"model {self.name}: a dense model needs intermediate_size > 0")
        for key in ("weight_dtype", "expert_dtype"):
            v = getattr(self, key)
            if v and v not in DTYPE_BYTES:
                raise ModelError(f"model {self.name}: {key} {v!r} unknown; allowed: {', '.join(DTYPE_BYTES)}")

    # -- derived facts -------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def moe_layers(self) -> int:
        return self.num_layers - self.dense_layers if self.is_moe else 0

    @property
    def full_attention_layers(self) -> int:
        return self.num_layers - self.sliding_layers

    @property
    def mlp_matrices(self) -> int:
        return 3 if self.gated_mlp else 2

    def attention_params(self, tp: int = 1) -> float:
        """Attention projection weights of one layer held by one of ``tp`` GPUs.

        Query and output projections are split across GPUs; key/value heads too,
        but a GPU always holds at least one (vLLM replicates KV heads when there
        are fewer than GPUs). MLA's latent down-projections are replicated.
        """
        h = self.hidden_size
        if self.is_mla:
            qk = self.qk_nope_head_dim + self.qk_rope_head_dim
            q = (h * self.q_lora_rank + self.q_lora_rank * self.num_heads * qk / tp if self.q_lora_rank
                 else h * self.num_heads * qk / tp)
            kv_a = h * (self.kv_lora_rank + self.qk_rope_head_dim)
            kv_b = self.kv_lora_rank * self.num_heads * (self.qk_nope_head_dim + self.v_head_dim) / tp
            o = self.num_heads * self.v_head_dim * h / tp
            return q + kv_a + kv_b + o
        q_o = 2 * h * self.num_heads * self.head_dim / tp
        kv = 2 * h * self.head_dim * self.kv_heads_per_gpu(tp)
        return q_o + kv

    def kv_heads_per_gpu(self, tp: int) -> float:
        return max(1.0, self.num_kv_heads / tp)

    def dense_mlp_params(self) -> float:
        return self.mlp_matrices * self.hidden_size * self.intermediate_size

    def expert_params(self) -> float:
        """Weights of one routed expert (a gated MLP of moe_intermediate_size)."""
        return 3 * self.hidden_size * self.moe_intermediate_size

    def shared_expert_params(self) -> float:
        return 3 * self.hidden_size * self.shared_expert_intermediate_size

    def router_params(self) -> float:
        return self.hidden_size * self.num_experts

    def total_params(self) -> float:
        """Every weight, embeddings included (checks against published sizes)."""
        per_layer_attn = self.attention_params(1) * self.num_layers
        dense = self.dense_mlp_params() * (self.num_layers if not self.is_moe else self.dense_layers)
        moe = self.moe_layers * (self.num_experts * self.expert_params() + self.shared_expert_params()
                                 + self.router_params())
        emb = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        return per_layer_attn + dense + moe + emb

    def active_params(self) -> float:
        """Weights one token's forward pass multiplies (embedding lookup excluded, LM head included)."""
        per_layer_attn = self.attention_params(1) * self.num_layers
        dense = self.dense_mlp_params() * (self.num_layers if not self.is_moe else self.dense_layers)
        moe = self.moe_layers * (self.experts_per_token * self.expert_params() + self.shared_expert_params()
                                 + self.router_params())
        return per_layer_attn + dense + moe + self.vocab_size * self.hidden_size

    def kv_bytes_per_token(self, kv_dtype_bytes: float, tp: int = 1, full_layers_only: bool = False) -> float:
        """KV-cache bytes one token occupies on one of ``tp`` GPUs.

        Ordinary attention stores a key and a value per KV head and layer; MLA
        stores one latent (kv_lora_rank + rope dims) per layer, on every GPU.
        ``full_layers_only`` leaves out sliding-window layers, whose cache per
        sequence is bounded by the window.
        """
        layers = self.full_attention_layers if full_layers_only else self.num_layers
        if self.is_mla:
            return layers * (self.kv_lora_rank + self.qk_rope_head_dim) * kv_dtype_bytes
        return layers * 2 * self.kv_heads_per_gpu(tp) * self.head_dim * kv_dtype_bytes

    def summary(self) -> str:
        kind = (f"MoE {self.num_experts} experts, {self.experts_per_token} per token" if self.is_moe
                else "dense")
        attn = "MLA" if self.is_mla else f"{self.num_heads} heads ({self.num_kv_heads} KV)"
        return (f"{self.num_layers} layers, hidden {self.hidden_size}, {attn}, {kind}, "
                f"{self.total_params() / 1e9:.1f}B params ({self.active_params() / 1e9:.1f}B active), "
                f"context {self.max_context}")

    # -- reading configs -------------------------------------------------------------
    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any], name: str, source: str = "") -> ModelArch:
        """Read a HuggingFace ``config.json`` (as a dict). Fails naming missing keys."""
        if not isinstance(cfg, dict):
            raise ModelError(f"{name}: a config.json holds a JSON object")
        if "text_config" in cfg and "num_hidden_layers" not in cfg:
            cfg = {**cfg["text_config"], **{k: v for k, v in cfg.items() if k == "quantization_config"}}
        model_type = str(cfg.get("model_type", ""))

        def pick(*keys: str, default: Any = None, required: bool = True) -> Any:
            for key in keys:
                if cfg.get(key) is not None:
                    return cfg[key]
            if required and default is None:
                raise ModelError(
                    f"{name}: config.json lacks {' / '.join(keys)}; is this a decoder-only "
                    "(Llama/Qwen/Mistral/Mixtral/DeepSeek/gpt-oss/BLOOM-style) model?"
                )
            return default

        layers = int(pick("num_hidden_layers", "n_layer", "num_layers"))
        hidden = int(pick("hidden_size", "n_embd", "n_embed", "d_model"))
        heads = int(pick("num_attention_heads", "n_head", "num_heads"))
        kv_heads = int(pick("num_key_value_heads", "multi_query_group_num", default=heads))
        head_dim = int(pick("head_dim", default=hidden // heads))
        gated = model_type not in ("bloom", "gpt2", "gpt_neox", "opt", "falcon")
        intermediate = int(pick("intermediate_size", "ffn_hidden_size", "n_inner", default=4 * hidden,
                                required=False))
        vocab = int(pick("vocab_size", "padded_vocab_size"))
        context = pick("max_position_embeddings", "max_sequence_length", "seq_length", "n_positions",
                       "max_seq_len", required=False)
        notes: list[str] = []
        if context is None:
            context = 2048
            notes.append("config gives no context length; assumed 2048")
        experts = int(pick("num_local_experts", "num_experts", "n_routed_experts", default=0, required=False) or 0)
        per_token = int(pick("num_experts_per_tok", "experts_per_token", "moe_topk", default=0,
                             required=False) or 0)
        moe_width = int(pick("moe_intermediate_size", default=0, required=False) or 0)
        if experts and not moe_width:
            moe_width = intermediate  # Mixtral and gpt-oss: experts are intermediate_size wide
        shared = 0
        if cfg.get("shared_expert_intermediate_size"):
            shared = int(cfg["shared_expert_intermediate_size"])
        elif cfg.get("n_shared_experts"):
            shared = int(cfg["n_shared_experts"]) * moe_width
        dense_layers = int(cfg.get("first_k_dense_replace") or 0) if experts else 0
        if experts and cfg.get("mlp_only_layers"):
            dense_layers += len(cfg["mlp_only_layers"])
        sliding_window, sliding_layers = 0, 0
        layer_types = cfg.get("layer_types")
        if isinstance(layer_types, list) and cfg.get("sliding_window"):
            sliding_layers = sum(1 for t in layer_types if "sliding" in str(t))
            sliding_window = int(cfg["sliding_window"])
        elif cfg.get("sliding_window") and cfg.get("use_sliding_window", True) and model_type == "mistral":
            notes.append(f"sliding_window {cfg['sliding_window']} on every layer treated as full attention "
                         "(costs and KV capacity are upper bounds)")
        dtype = _HF_DTYPES.get(str(pick("torch_dtype", "dtype", default="bfloat16", required=False)), "bf16")
        expert_dtype = ""
        quant = cfg.get("quantization_config") or {}
        method = str(quant.get("quant_method", "")).lower()
        if method == "mxfp4":
            expert_dtype = "mxfp4"
        elif method == "fp8":
            dtype = "fp8"
        elif method in ("awq", "gptq", "compressed-tensors") and int(quant.get("bits", 0) or 0) == 4:
            dtype = "int4"
        elif method:
            notes.append(f"quantization {method!r} not modelled; weights counted as {dtype}")
        mla = {}
        if cfg.get("kv_lora_rank"):
            mla = dict(kv_lora_rank=int(cfg["kv_lora_rank"]), q_lora_rank=int(cfg.get("q_lora_rank") or 0),
                       qk_rope_head_dim=int(cfg["qk_rope_head_dim"]), qk_nope_head_dim=int(cfg["qk_nope_head_dim"]),
                       v_head_dim=int(cfg["v_head_dim"]))
        return cls(
            name=name, num_layers=layers, hidden_size=hidden, num_heads=heads, num_kv_heads=kv_heads,
            head_dim=head_dim, intermediate_size=intermediate, vocab_size=vocab, max_context=int(context),
            gated_mlp=gated, tie_word_embeddings=bool(cfg.get("tie_word_embeddings", model_type == "bloom")),
            num_experts=experts, experts_per_token=per_token if experts else 0,
            moe_intermediate_size=moe_width if experts else 0, shared_expert_intermediate_size=shared,
            dense_layers=dense_layers, sliding_window=sliding_window, sliding_layers=sliding_layers,
            weight_dtype=dtype, expert_dtype=expert_dtype, source=source, notes=tuple(notes), **mla,
        )


def hf_cache_dirs() -> list[Path]:
    """Where HuggingFace keeps downloaded repositories (``HF_HUB_CACHE``, ``HF_HOME``, the default)."""
    dirs = []
    if os.environ.get("HF_HUB_CACHE"):
        dirs.append(Path(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        dirs.append(Path(os.environ["HF_HOME"]) / "hub")
    dirs.append(Path.home() / ".cache" / "huggingface" / "hub")
    return dirs


def find_in_hf_cache(repo_id: str) -> Path | None:
    """The cached ``config.json`` of ``repo_id`` (its ``main`` snapshot if recorded), or None."""
    folder_name = "models--" + repo_id.replace("/", "--")
    for root in hf_cache_dirs():
        repo = root / folder_name
        if not repo.is_dir():
            continue
        ref = repo / "refs" / "main"
        if ref.is_file():
            candidate = repo / "snapshots" / ref.read_text().strip() / "config.json"
            if candidate.is_file():
                return candidate
        for candidate in sorted((repo / "snapshots").glob("*/config.json")):
            return candidate
    return None


def load_model(spec: str) -> ModelArch:
    """A shipped model name, a path to a config.json (or its folder), or a cached HuggingFace id."""
    from sim.profiles.model_catalog import catalog_model, shipped_models

    arch = catalog_model(spec)
    if arch is not None:
        return arch
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        return _read_config(path, name=path.parent.name or spec, source=str(path))
    if "/" in spec and not spec.startswith((".", "/", "~")):
        cached = find_in_hf_cache(spec)
        if cached is not None:
            return _read_config(cached, name=spec, source=f"{spec} (local HuggingFace cache: {cached})")
    raise ModelError(
        f"unknown model {spec!r}: not a shipped model ({', '.join(shipped_models())}), not a config.json "
        f"or a folder holding one, and not a HuggingFace id in the local cache "
        f"({', '.join(str(d) for d in hf_cache_dirs())}); nothing is downloaded — fetch the model's "
        "config.json and pass its path"
    )


def _read_config(path: Path, name: str, source: str) -> ModelArch:
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: cannot read config.json ({exc})") from None
    return ModelArch.from_hf_config(cfg, name=name, source=source)
