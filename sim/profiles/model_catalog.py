"""Architecture facts of current open models, shipped so profiles can be derived offline.

Each entry holds the keys of the model's own HuggingFace ``config.json`` that
the arithmetic reads, copied from the file named in ``source`` (every figure of
a model comes from that one file; ``huggingface.co/<id>/blob/main/config.json``).
They are parsed by the same ``ModelArch.from_hf_config`` as a user's local
config.json, so the catalogue and a downloaded config cannot disagree on meaning.
Gated repositories (Meta's Llama) need a HuggingFace login to view; the figures
are also in the model cards and papers.
"""
from __future__ import annotations

from sim.profiles.architecture import ModelArch

_HF = "https://huggingface.co/{}/blob/main/config.json"

_LLAMA3 = dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=128256,
               max_position_embeddings=131072, tie_word_embeddings=False, torch_dtype="bfloat16")

#: short name -> (HuggingFace id, config.json keys, remark)
MODELS: dict[str, tuple[str, dict, str]] = {
    "llama-3.1-8b": ("meta-llama/Llama-3.1-8B-Instruct", _LLAMA3, ""),
    "llama-3.1-70b": ("meta-llama/Llama-3.1-70B-Instruct",
                      {**_LLAMA3, "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
                       "num_attention_heads": 64}, ""),
    "llama-2-70b": ("meta-llama/Llama-2-70b-hf",
                    dict(model_type="llama", hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                         num_attention_heads=64, num_key_value_heads=8, vocab_size=32000,
                         max_position_embeddings=4096, tie_word_embeddings=False, torch_dtype="float16"),
                    "the model Splitwise measured (tests/data/splitwise_perf_model.csv)"),
    "qwen3-8b": ("Qwen/Qwen3-8B",
                 dict(model_type="qwen3", hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                      num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                      max_position_embeddings=40960, tie_word_embeddings=False, torch_dtype="bfloat16"), ""),
    "qwen3-32b": ("Qwen/Qwen3-32B",
                  dict(model_type="qwen3", hidden_size=5120, intermediate_size=25600, num_hidden_layers=64,
                       num_attention_heads=64, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                       max_position_embeddings=40960, tie_word_embeddings=False, torch_dtype="bfloat16"), ""),
    "qwen3-30b-a3b": ("Qwen/Qwen3-30B-A3B",
                      dict(model_type="qwen3_moe", hidden_size=2048, intermediate_size=6144,
                           moe_intermediate_size=768, num_experts=128, num_experts_per_tok=8,
                           num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=4, head_dim=128,
                           vocab_size=151936, max_position_embeddings=40960, tie_word_embeddings=False,
                           mlp_only_layers=[], torch_dtype="bfloat16"), ""),
    "mistral-7b": ("mistralai/Mistral-7B-Instruct-v0.3",
                   dict(model_type="mistral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                        num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=32768,
                        max_position_embeddings=32768, sliding_window=None, tie_word_embeddings=False,
                        torch_dtype="bfloat16"), ""),
    "mixtral-8x7b": ("mistralai/Mixtral-8x7B-Instruct-v0.1",
                     dict(model_type="mixtral", hidden_size=4096, intermediate_size=14336, num_local_experts=8,
                          num_experts_per_tok=2, num_hidden_layers=32, num_attention_heads=32,
                          num_key_value_heads=8, vocab_size=32000, max_position_embeddings=32768,
                          sliding_window=None, tie_word_embeddings=False, torch_dtype="bfloat16"), ""),
    "deepseek-v2-lite": ("deepseek-ai/DeepSeek-V2-Lite",
                         dict(model_type="deepseek_v2", hidden_size=2048, intermediate_size=10944,
                              moe_intermediate_size=1408, n_routed_experts=64, n_shared_experts=2,
                              num_experts_per_tok=6, first_k_dense_replace=1, num_hidden_layers=27,
                              num_attention_heads=16, num_key_value_heads=16, kv_lora_rank=512, q_lora_rank=None,
                              qk_rope_head_dim=64, qk_nope_head_dim=128, v_head_dim=128, vocab_size=102400,
                              max_position_embeddings=163840, tie_word_embeddings=False, torch_dtype="bfloat16"),
                         "multi-head latent attention"),
    "gpt-oss-20b": ("openai/gpt-oss-20b",
                    dict(model_type="gpt_oss", hidden_size=2880, intermediate_size=2880, num_local_experts=32,
                         num_experts_per_tok=4, num_hidden_layers=24, num_attention_heads=64,
                         num_key_value_heads=8, head_dim=64, vocab_size=201088, max_position_embeddings=131072,
                         sliding_window=128, layer_types=["sliding_attention", "full_attention"] * 12,
                         tie_word_embeddings=False, torch_dtype="bfloat16",
                         quantization_config={"quant_method": "mxfp4"}),
                    "MXFP4 experts, every other layer a 128-token sliding window"),
    "gpt-oss-120b": ("openai/gpt-oss-120b",
                     dict(model_type="gpt_oss", hidden_size=2880, intermediate_size=2880, num_local_experts=128,
                          num_experts_per_tok=4, num_hidden_layers=36, num_attention_heads=64,
                          num_key_value_heads=8, head_dim=64, vocab_size=201088, max_position_embeddings=131072,
                          sliding_window=128, layer_types=["sliding_attention", "full_attention"] * 18,
                          tie_word_embeddings=False, torch_dtype="bfloat16",
                          quantization_config={"quant_method": "mxfp4"}),
                     "MXFP4 experts, every other layer a 128-token sliding window"),
    "bloom-176b": ("bigscience/bloom",
                   dict(model_type="bloom", hidden_size=14336, n_layer=70, n_head=112, vocab_size=250880,
                        seq_length=2048, tie_word_embeddings=True, torch_dtype="bfloat16"),
                   "GELU MLP of 4 x hidden; ALiBi; trained on 2048-token sequences (seq_length); the held-out "
                   "model of the accuracy check"),
}

#: Other spellings accepted for a shipped model (lower case).
ALIASES = {
    "llama2-70b": "llama-2-70b",
    "bloom": "bloom-176b",
    "mistral-7b-instruct": "mistral-7b",
    "mixtral-8x7b-instruct": "mixtral-8x7b",
}


def shipped_models() -> list[str]:
    return list(MODELS)


def _resolve(spec: str) -> str | None:
    key = spec.strip().lower()
    if key in MODELS:
        return key
    if key in ALIASES:
        return ALIASES[key]
    for short, (hf_id, _, _) in MODELS.items():
        if hf_id.lower() == key:
            return short
    return None


def catalog_model(spec: str) -> ModelArch | None:
    """The shipped model called ``spec`` (short name, alias or HuggingFace id), or None."""
    short = _resolve(spec)
    if short is None:
        return None
    hf_id, cfg, _ = MODELS[short]
    return ModelArch.from_hf_config(cfg, name=short, source=_HF.format(hf_id))
