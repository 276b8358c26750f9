"""A latency profile derived from a model's arithmetic, a device's datasheet and a few efficiency factors.

Each coefficient of the step-time model (``sim.latency``) is work divided by
achieved speed:

    weight_s       = dense weight bytes / (memory bandwidth x hbm_efficiency)
    expert_s       = routed-expert bytes / (memory bandwidth x hbm_efficiency)
    token_s        = matmul FLOPs per token / (peak x matmul_efficiency)
                     + sliding-window attention FLOPs per token / (peak x attention_efficiency)
                     + all-reduce bytes per token / (link bandwidth x interconnect_efficiency)
    seq_s          = LM-head FLOPs per sequence / (peak x matmul_efficiency)
                     + sliding-window KV bytes per sequence / (bandwidth x hbm_efficiency) + seq_overhead_s
    prefill_attn_s = attention FLOPs per (query, key) pair / (peak x attention_efficiency)
    decode_attn_s  = max(KV bytes, attention FLOPs / peak ratio) per context token
    step_s         = step_overhead_s + (layers x layer_cycles + all-reduce steps x allreduce_step_cycles) / clock
    prefill_floor_s = layers x prefill_floor_layer_s
    spill_tokens   = L2 cache bytes / residual bytes per token (the reduced tensor and the residual stream)
    spill_token_s  = allreduce_spill_cost x all-reduce bytes per token / (memory bandwidth x hbm_efficiency)

and the model takes the roofline ``max(weight_s + expert_s x touched, token_s x T)``
for the matmuls. A step of more tokens than ``spill_tokens`` pays ``spill_token_s``
for each token beyond: its all-reduces no longer run from L2 but from HBM
(only with tensor parallelism and a device whose L2 size is known).

KV capacity follows vLLM's memory accounting: the device memory
times ``gpu_memory_utilization`` minus the weights, the activation peak of a
``max_num_batched_tokens`` forward pass and a fixed runtime reserve, divided by
the KV bytes of a token. Engine limits are vLLM's defaults for the device.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from sim.latency import EngineDefaults, LatencyModel, LatencyProfile
from sim.profiles.architecture import ModelArch, load_model
from sim.profiles.arithmetic import StepArithmetic, step_arithmetic
from sim.profiles.errors import DeriveError
from sim.profiles.factors import EfficiencyFactors, FactorSet, load_factor_set
from sim.profiles.hardware import DeviceSpec, load_device

#: vLLM's default ``gpu_memory_utilization`` (vllm/config/cache.py: 0.92 in vLLM 0.32;
#: 0.9 in releases before it).
GPU_MEMORY_UTILIZATION = 0.92
#: Per-GPU memory outside weights, activations and KV (CUDA context, NCCL and cuBLAS
#: workspaces, CUDA-graph pools): an assumption, vLLM measures it at startup.
RUNTIME_RESERVE_GIB = 1.0
GIB = 1 << 30
#: Factor set for measured (CPU) devices when none is named.
CPU_FACTOR_SET = "cpu-vllm"
KEYS = ("model", "gpu", "tp", "dtype", "factors", "gpu_memory_utilization", "max_num_seqs",
        "max_num_batched_tokens", "block_size")


def latency_model(arith: StepArithmetic, device: DeviceSpec, f: EfficiencyFactors) -> LatencyModel:
    """The step-time coefficients of ``arith`` on ``device`` at efficiencies ``f``."""
    bw = device.memory_bw_gbs * 1e9 * f.hbm_efficiency
    mm = device.matmul_flops(arith.weight_dtype) * f.matmul_efficiency
    attn_peak = device.matmul_flops("fp32" if arith.activation_bytes == 4 else "bf16")
    at = attn_peak * f.attention_efficiency
    link = device.interconnect_gbs * 1e9 * f.interconnect_efficiency
    clock = device.clock_mhz * 1e6
    token_s = arith.matmul_flops_per_token / mm + arith.window_flops_per_token / at
    if arith.allreduce_bytes_per_token:
        token_s += arith.allreduce_bytes_per_token / link
    spill_tokens = spill_token_s = 0.0
    if f.allreduce_spill_cost and device.l2_cache_mb and arith.residual_bytes_per_token:
        spill_tokens = device.l2_cache_mb * 1e6 / arith.residual_bytes_per_token
        spill_token_s = f.allreduce_spill_cost * arith.allreduce_bytes_per_token / bw
    return LatencyModel(
        step_s=f.step_overhead_s + (arith.layers * f.layer_cycles + arith.allreduce_steps * f.allreduce_step_cycles)
        / clock,
        token_s=token_s,
        seq_s=arith.lm_head_flops_per_seq / mm + arith.window_kv_bytes_per_seq / bw + f.seq_overhead_s,
        prefill_attn_s=arith.attention_flops_per_pair / at,
        decode_attn_s=max(arith.kv_bytes_per_context_token / bw, arith.attention_flops_per_context_token / at),
        weight_s=arith.dense_weight_bytes / bw,
        expert_s=arith.expert_weight_bytes / bw,
        experts=arith.experts if arith.expert_weight_bytes else 0,
        experts_per_token=arith.experts_per_token if arith.expert_weight_bytes else 0,
        prefill_floor_s=arith.layers * f.prefill_floor_layer_s,
        spill_tokens=spill_tokens,
        spill_token_s=spill_token_s,
    )


def vllm_default_limits(device: DeviceSpec) -> tuple[int, int]:
    """(max_num_seqs, max_num_batched_tokens) vLLM's OpenAI server picks for the device.

    vllm/engine/arg_utils.py (``get_batch_defaults``, vLLM 0.32): >= 160 GiB of
    device memory: 1024 / 16384; >= 70 GiB and not an A100: 1024 / 8192; else 256 / 2048.
    """
    if device.measured:
        return 128, 2048  # vLLM-CPU's server defaults (same file), one worker
    if device.memory_gb >= 160:
        return 1024, 16384
    if device.memory_gb >= 70 and not device.name.startswith("a100"):
        return 1024, 8192
    return 256, 2048


@dataclass(frozen=True)
class MemoryPlan:
    """Where each GPU's memory goes, in bytes (vLLM's startup accounting, estimated)."""

    budget: float
    weights: float
    activations: float
    reserve: float
    kv_cache: float
    kv_bytes_per_token: float
    kv_tokens: int


def memory_plan(arch: ModelArch, arith: StepArithmetic, device: DeviceSpec, *, max_num_batched_tokens: int,
                max_num_seqs: int, gpu_memory_utilization: float = GPU_MEMORY_UTILIZATION,
                kv_cache_gib: float = 0.0) -> MemoryPlan:
    """KV-cache capacity from the memory left after weights, activations and the runtime reserve.

    The activation peak is that of vLLM's profiling forward pass over
    ``max_num_batched_tokens`` tokens: one layer's widest intermediates (the
    hidden state a few times over and the MLP's gate/up/activation outputs) plus
    float32 logits for ``max_num_seqs`` sampled sequences. ``kv_cache_gib`` > 0
    fixes the cache size instead (vLLM-CPU's ``VLLM_CPU_KVCACHE_SPACE``).
    """
    if not 0 < gpu_memory_utilization <= 1:
        raise DeriveError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    tp = arith.tp
    width = (arch.experts_per_token * arch.moe_intermediate_size + arch.shared_expert_intermediate_size
             if arch.is_moe else arch.intermediate_size)
    activations = max_num_batched_tokens * arith.activation_bytes * (4 * arch.hidden_size + 3 * width / tp) \
        + max_num_seqs * arch.vocab_size / tp * 4
    budget = device.memory_gb * GIB * gpu_memory_utilization
    reserve = 0.0 if device.measured else RUNTIME_RESERVE_GIB * GIB
    kv = kv_cache_gib * GIB if kv_cache_gib > 0 else budget - arith.weight_memory_bytes - activations - reserve
    if kv <= 0:
        need = (arith.weight_memory_bytes + activations + reserve) / GIB
        raise DeriveError(
            f"{arch.name} does not fit: each of {tp} x {device.name} would need {need:.1f} GiB for weights "
            f"({arith.weight_memory_bytes / GIB:.1f} GiB), activations and runtime, of "
            f"{budget / GIB:.1f} GiB usable ({device.memory_gb:g} GiB x {gpu_memory_utilization}); "
            "use a larger tensor parallel size, a smaller dtype or a bigger device"
        )
    per_token = arith.kv_cache_bytes_per_token
    return MemoryPlan(budget=budget, weights=arith.weight_memory_bytes, activations=activations, reserve=reserve,
                      kv_cache=kv, kv_bytes_per_token=per_token, kv_tokens=int(kv // per_token))


def profile_name(model: str, gpu: str, tp: int, dtype: str) -> str:
    short = model.rstrip("/").split("/")[-1].lower()
    if short == "config.json":
        short = model.rstrip("/").split("/")[-2].lower()
    return f"derived-{short}-{gpu}-tp{tp}" + ("" if dtype == "auto" else f"-{dtype}")


def derive_profile(
    model: str | ModelArch,
    gpu: str | DeviceSpec,
    tp: int = 1,
    dtype: str = "auto",
    *,
    factors: str | FactorSet | None = None,
    gpu_memory_utilization: float = GPU_MEMORY_UTILIZATION,
    max_num_seqs: int = 0,
    max_num_batched_tokens: int = 0,
    block_size: int = 16,
    kv_cache_gib: float = 0.0,
    name: str | None = None,
) -> LatencyProfile:
    """A latency profile for ``model`` served by vLLM on ``tp`` x ``gpu`` (see the module docstring)."""
    arch = model if isinstance(model, ModelArch) else load_model(model)
    device = gpu if isinstance(gpu, DeviceSpec) else load_device(gpu)
    if factors is None and device.measured:
        factors = CPU_FACTOR_SET
    fset = factors if isinstance(factors, FactorSet) else load_factor_set(factors)
    if block_size < 1 or max_num_seqs < 0 or max_num_batched_tokens < 0:
        raise DeriveError("block_size must be >= 1 and max_num_seqs / max_num_batched_tokens >= 0 (0: vLLM's default)")
    arith = step_arithmetic(arch, tp, dtype)
    if arith.weight_dtype not in device.dtypes():
        raise DeriveError(f"dtype {arith.weight_dtype} is not modelled on {device.name}; allowed: "
                          f"{', '.join(device.dtypes())}")
    seqs, batched = vllm_default_limits(device)
    seqs, batched = max_num_seqs or seqs, max_num_batched_tokens or batched
    plan = memory_plan(arch, arith, device, max_num_batched_tokens=batched, max_num_seqs=seqs,
                       gpu_memory_utilization=gpu_memory_utilization, kv_cache_gib=kv_cache_gib)
    model_len = min(arch.max_context, plan.kv_tokens)
    lat = latency_model(arith, device, fset.factors)
    notes = list(arch.notes) + list(device.notes)
    if plan.kv_tokens < arch.max_context:
        notes.append(f"KV cache holds {plan.kv_tokens} tokens, fewer than the model's context "
                     f"{arch.max_context}: vLLM would need --max-model-len <= {plan.kv_tokens}")
    hardware = f"{tp}x {device.description}" + (f" ({device.interconnect})" if tp > 1 else "")
    return LatencyProfile(
        name=name or profile_name(arch.name, device.name, tp, dtype),
        model=lat,
        engine=EngineDefaults(num_kv_blocks=max(1, plan.kv_tokens // block_size), block_size=block_size,
                              max_num_seqs=seqs, max_num_batched_tokens=batched, max_model_len=model_len,
                              async_scheduling=not device.measured),  # vLLM's default on GPU
        description=f"{arch.name} on {tp}x {device.name}, {_dtype_words(arith)} weights: derived from "
                    "architecture and datasheet, not measured",
        hardware=hardware,
        served_model=arch.name,
        provisional=True,
        source={
            "kind": "derived",
            "spec": {"model": arch.name, "gpu": device.name, "tp": tp, "dtype": dtype,
                     "factors": fset.name, "gpu_memory_utilization": gpu_memory_utilization},
            "command": derive_command(arch.source if arch.source.endswith(".json") and "huggingface.co" not in
                                      arch.source else arch.name, device.name, tp, dtype, fset.name),
            "model": {"source": arch.source, "summary": arch.summary(),
                      "params_b": round(arch.total_params() / 1e9, 3),
                      "active_params_b": round(arch.active_params() / 1e9, 3)},
            "device": {"name": device.name, "description": device.description, "summary": device.summary(),
                       "sources": device.sources, "measured": device.measured},
            "factors": {"name": fset.name, "values": asdict(fset.factors), "fitted_on": fset.source.get("data", ""),
                        "description": fset.description},
            "arithmetic_per_gpu": {k: v for k, v in arith.as_dict().items() if k not in ("model",)},
            "memory_per_gpu_gib": {k: round(getattr(plan, k) / GIB, 3)
                                   for k in ("budget", "weights", "activations", "reserve", "kv_cache")},
            "kv_tokens": plan.kv_tokens,
            "notes": notes,
            "validated": "not checked against a measured GPU yet; see docs/derived-profiles.md",
        },
    )


def _dtype_words(arith: StepArithmetic) -> str:
    if arith.expert_dtype and arith.expert_dtype != arith.weight_dtype:
        return f"{arith.weight_dtype} ({arith.expert_dtype} experts)"
    return arith.weight_dtype


def derive_command(model: str, gpu: str, tp: int, dtype: str, factors: str) -> str:
    cmd = f"python -m sim.profiles derive --model {model} --gpu {gpu} --tp {tp}"
    if dtype != "auto":
        cmd += f" --dtype {dtype}"
    if factors != "gpu-splitwise":
        cmd += f" --factors {factors}"
    return cmd


def profile_from_spec(spec: dict[str, Any]) -> LatencyProfile:
    """A derived profile from a scenario's ``profile = { model = ..., gpu = ..., tp = ..., dtype = ... }``."""
    if not isinstance(spec, dict):
        raise DeriveError(f"a derived profile is a table, got {spec!r}")
    unknown = set(spec) - set(KEYS)
    if unknown:
        raise DeriveError(f"unknown key(s) {sorted(unknown)} in a derived profile; allowed: {', '.join(KEYS)}")
    for key in ("model", "gpu"):
        if not isinstance(spec.get(key), str) or not spec[key]:
            raise DeriveError(f"a derived profile needs {key} = \"...\" (allowed keys: {', '.join(KEYS)})")
    tp = spec.get("tp", 1)
    if isinstance(tp, bool) or not isinstance(tp, int):
        raise DeriveError(f"tp must be an integer, got {tp!r}")
    util = spec.get("gpu_memory_utilization", GPU_MEMORY_UTILIZATION)
    if isinstance(util, bool) or not isinstance(util, (int, float)) or math.isnan(util):
        raise DeriveError(f"gpu_memory_utilization must be a number in (0, 1], got {util!r}")
    return derive_profile(spec["model"], spec["gpu"], tp, str(spec.get("dtype", "auto")),
                          factors=spec.get("factors"), gpu_memory_utilization=float(util),
                          max_num_seqs=int(spec.get("max_num_seqs", 0)),
                          max_num_batched_tokens=int(spec.get("max_num_batched_tokens", 0)),
                          block_size=int(spec.get("block_size", 16)))
