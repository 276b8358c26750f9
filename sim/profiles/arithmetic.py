"""The work one engine step does, per GPU, from a model's architecture: FLOPs and bytes.

A step of T scheduled tokens from S sequences, with W causal (query, key)
pairs of prefill attention and C context tokens read by decodes, costs each of
the ``tp`` GPUs of a tensor-parallel replica:

- every weight it uses, read once from memory (``dense_weight_bytes``; for a
  mixture of experts, the routed experts some token picked: ``expert_weight_bytes``
  times the expected fraction touched);
- ``2 x weights`` FLOPs per token for the matmuls (only the experts a token is
  routed to count), and the LM head's ``2 x vocab x hidden`` per sequence (vLLM
  computes logits only at the positions it samples);
- attention: ``4 x heads x head_dim`` FLOPs per (query, key) pair per layer
  (QK^T and PV), and per context token of a decode the KV bytes it reads;
- a ring all-reduce of the hidden state after attention and after the MLP of
  every layer (and after the vocab-parallel embedding): ``2(tp-1)/tp`` of its
  bytes cross each GPU's link, in ``2(tp-1)`` latency-bound steps. Around each
  all-reduce two hidden-state tensors are live per token, the one being reduced
  and the residual stream it is added into (``residual_bytes_per_token``, both
  counted): whether a step's fit in L2 decides where the all-reduce runs from.

These are exact counts of a standard transformer's dense arithmetic (norms,
rotary embeddings, biases and activations are below 1% and left out); the tests
check them against hand-computed FLOPs and bytes. How fast the hardware turns
them into time is ``sim.profiles.derive``'s business.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from sim.profiles.architecture import DTYPE_BYTES, ModelArch
from sim.profiles.errors import DeriveError

DTYPES = ("auto",) + tuple(DTYPE_BYTES)


class ConfigError(DeriveError):
    """A configuration vLLM would refuse (names the rule)."""


@dataclass(frozen=True)
class StepArithmetic:
    """Per-GPU work of each step-time term (FLOPs and bytes; see the module docstring)."""

    model: str
    tp: int
    layers: int
    weight_dtype: str
    expert_dtype: str
    activation_bytes: float
    dense_weight_bytes: float
    expert_weight_bytes: float
    experts: int
    experts_per_token: int
    matmul_flops_per_token: float
    lm_head_flops_per_seq: float
    attention_flops_per_pair: float
    window_flops_per_token: float
    kv_bytes_per_context_token: float
    attention_flops_per_context_token: float
    window_kv_bytes_per_seq: float
    allreduce_bytes_per_token: float
    allreduce_steps: int
    #: Bytes of the two hidden-state tensors live around an all-reduce, per token
    #: (0 without tensor parallelism: there is no all-reduce).
    residual_bytes_per_token: float
    #: Weight memory held per GPU (embeddings included) and KV bytes per cached token.
    weight_memory_bytes: float
    kv_cache_bytes_per_token: float

    def as_dict(self) -> dict:
        return asdict(self)


def weight_dtypes(arch: ModelArch, dtype: str) -> tuple[str, str]:
    """(non-expert, expert) weight storage types: the checkpoint's for ``auto``."""
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
    if dtype == "auto":
        return arch.weight_dtype, arch.expert_dtype or arch.weight_dtype
    return dtype, dtype


def check_tp(arch: ModelArch, tp: int) -> None:
    """vLLM's divisibility rules for tensor parallelism (vllm/config/model.py)."""
    if not (isinstance(tp, int) and tp >= 1):
        raise ConfigError(f"tensor parallel size must be an integer >= 1, got {tp!r}")
    if arch.num_heads % tp:
        raise ConfigError(
            f"{arch.name}: tensor parallel {tp} must divide its {arch.num_heads} attention heads "
            f"(vLLM requires it); allowed: {', '.join(str(t) for t in range(1, 17) if arch.num_heads % t == 0)}"
        )
    if not arch.is_mla and arch.num_kv_heads % tp and tp % arch.num_kv_heads:
        raise ConfigError(
            f"{arch.name}: tensor parallel {tp} must divide its {arch.num_kv_heads} KV heads or be a "
            "multiple of them (vLLM requires it)"
        )


def step_arithmetic(arch: ModelArch, tp: int = 1, dtype: str = "auto") -> StepArithmetic:
    """The per-GPU FLOPs and bytes of ``arch`` served at tensor parallel ``tp``."""
    check_tp(arch, tp)
    wdt, edt = weight_dtypes(arch, dtype)
    wb, eb = DTYPE_BYTES[wdt], DTYPE_BYTES[edt]
    # Activations and the KV cache are 16-bit on GPUs (vLLM's kv_cache_dtype "auto" is the
    # model's activation dtype even for fp8/int4 weights), 32-bit for an fp32 model.
    act = 4.0 if wdt == "fp32" else 2.0
    h, L = arch.hidden_size, arch.num_layers
    heads = arch.num_heads / tp

    attn = arch.attention_params(tp) * L
    dense_mlp = arch.dense_mlp_params() / tp * (L if not arch.is_moe else arch.dense_layers)
    shared = arch.shared_expert_params() / tp * arch.moe_layers
    router = arch.router_params() * arch.moe_layers  # replicated on every GPU
    lm_head = arch.vocab_size * h / tp
    experts_all = arch.expert_params() / tp * arch.num_experts * arch.moe_layers
    experts_active = arch.expert_params() / tp * arch.experts_per_token * arch.moe_layers

    dense_weight_bytes = (attn + dense_mlp + shared + router + lm_head) * wb
    expert_weight_bytes = experts_all * eb
    embedding_bytes = 0.0 if arch.tie_word_embeddings else lm_head * wb

    full = arch.full_attention_layers
    if arch.is_mla:
        qk = arch.qk_nope_head_dim + arch.qk_rope_head_dim
        pair = 2.0 * (qk + arch.v_head_dim) * heads  # prefill: MLA expanded to per-head K and V
        ctx_flops = 2.0 * (2 * arch.kv_lora_rank + arch.qk_rope_head_dim) * heads  # decode: absorbed latent
    else:
        pair = 4.0 * arch.head_dim * heads
        ctx_flops = pair
    kv_ctx = arch.kv_bytes_per_token(act, tp, full_layers_only=True)
    sliding_kv_per_token = arch.kv_bytes_per_token(act, tp) - kv_ctx
    window = arch.sliding_window

    steps = 2 * (tp - 1)
    allreduces = 2 * L + 1
    return StepArithmetic(
        model=arch.name, tp=tp, layers=L, weight_dtype=wdt, expert_dtype=edt if arch.is_moe else "",
        activation_bytes=act,
        dense_weight_bytes=dense_weight_bytes,
        expert_weight_bytes=expert_weight_bytes,
        experts=arch.num_experts, experts_per_token=arch.experts_per_token,
        matmul_flops_per_token=2.0 * (attn + dense_mlp + shared + router + experts_active),
        lm_head_flops_per_seq=2.0 * lm_head,
        attention_flops_per_pair=pair * full,
        window_flops_per_token=pair * window * arch.sliding_layers,
        kv_bytes_per_context_token=kv_ctx,
        attention_flops_per_context_token=ctx_flops * full,
        window_kv_bytes_per_seq=sliding_kv_per_token * window,
        allreduce_bytes_per_token=(allreduces * h * act * steps / tp) if tp > 1 else 0.0,
        allreduce_steps=allreduces * steps,
        residual_bytes_per_token=2.0 * h * act if tp > 1 else 0.0,
        weight_memory_bytes=dense_weight_bytes + expert_weight_bytes + embedding_bytes,
        kv_cache_bytes_per_token=kv_ctx if arch.sliding_layers < arch.num_layers else arch.kv_bytes_per_token(act, tp),
    )
