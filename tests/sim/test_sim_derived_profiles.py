"""Derived latency profiles: the arithmetic against hand-computed FLOPs and bytes, config
loading, clear errors, and that derived profiles load, simulate and are listed."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import routing
from sim.cluster import simulate
from sim.latency import LatencyModel, LatencyProfile, ProfileError, load_profile, shipped_profiles
from sim.profiles import (
    DeriveError, ModelArch, derive_profile, get_gpu, latency_model, load_factor_set, load_model, step_arithmetic,
)
from sim.profiles.cli import main as profiles_main
from sim.profiles.factors import EfficiencyFactors, FactorSet
from sim.profiles.hardware import DeviceSpec

from sim_helpers import fleet, record_differences, simple_trace

# A dense Llama small enough to count by hand: 2 layers, hidden 64, 4 heads of 16, 2 KV heads,
# MLP 128, vocabulary 100.
DENSE = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 128, "vocab_size": 100,
         "max_position_embeddings": 4096, "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
# The same attention with a Mixtral-style MoE: 4 experts of width 32, 2 per token.
MOE = {**DENSE, "model_type": "mixtral", "num_local_experts": 4, "num_experts_per_tok": 2, "intermediate_size": 32}
# A device with round numbers: 100 TFLOP/s bf16, 1000 GB/s, 100 GB/s links, 1 GHz.
DEVICE = DeviceSpec("test", "test device", bf16_tflops=100, fp8_tflops=200, memory_gb=16, memory_bw_gbs=1000,
                    interconnect_gbs=100, interconnect="link", clock_mhz=1000)


def test_dense_arithmetic_matches_hand_counts():
    a = step_arithmetic(ModelArch.from_hf_config(DENSE, "dense"), tp=1, dtype="auto")
    # per layer: q 64x64 + k 64x32 + v 64x32 + o 64x64 = 12288; MLP 3 x 64 x 128 = 24576
    # LM head 100 x 64 = 6400; bf16 = 2 bytes
    assert a.dense_weight_bytes == (2 * 12288 + 2 * 24576 + 6400) * 2 == 160256
    assert a.expert_weight_bytes == 0
    assert a.matmul_flops_per_token == 2 * (2 * 12288 + 2 * 24576) == 147456
    assert a.lm_head_flops_per_seq == 2 * 6400
    # QK^T and PV: 2 x 16 FLOPs each per head per pair, 4 heads, 2 layers
    assert a.attention_flops_per_pair == 4 * 16 * 4 * 2 == 512
    # K and V of 2 heads of 16, 2 layers, 2 bytes
    assert a.kv_bytes_per_context_token == 2 * 2 * 2 * 16 * 2 == 256
    assert a.allreduce_bytes_per_token == 0 and a.allreduce_steps == 0
    assert a.weight_memory_bytes == 160256 + 6400 * 2  # plus the untied embedding


def test_dense_tensor_parallel_splits_heads_and_mlp():
    a = step_arithmetic(ModelArch.from_hf_config(DENSE, "dense"), tp=2, dtype="bf16")
    # per GPU and layer: q+o 2x64x64/2 = 4096, k+v one head each 2x64x16 = 2048, MLP 24576/2
    assert a.dense_weight_bytes == (2 * (4096 + 2048) + 2 * 12288 + 3200) * 2
    # 2 all-reduces per layer + 1 after the embedding, of 64 x 2 bytes, (tp-1)/tp x 2 of it per GPU
    assert a.allreduce_bytes_per_token == 5 * 64 * 2 * 2 * (2 - 1) / 2 == 640
    assert a.allreduce_steps == 5 * 2
    assert a.kv_bytes_per_context_token == 2 * 2 * 1 * 16 * 2


def test_moe_arithmetic_matches_hand_counts():
    a = step_arithmetic(ModelArch.from_hf_config(MOE, "moe"), tp=1, dtype="auto")
    expert = 3 * 64 * 32  # one gated expert
    router = 64 * 4
    assert a.dense_weight_bytes == (2 * 12288 + 2 * router + 6400) * 2 == 62976
    assert a.expert_weight_bytes == 2 * 4 * expert * 2 == 98304
    assert a.matmul_flops_per_token == 2 * (2 * 12288 + 2 * router + 2 * 2 * expert) == 99328
    assert (a.experts, a.experts_per_token) == (4, 2)


def test_moe_step_reads_the_experts_a_batch_touches():
    m = latency_model(step_arithmetic(ModelArch.from_hf_config(MOE, "moe"), 1, "auto"), DEVICE,
                      EfficiencyFactors(hbm_efficiency=1.0, matmul_efficiency=1.0, attention_efficiency=1.0))
    weights, experts = 62976 / 1e12, 98304 / 1e12
    assert m.weight_s == pytest.approx(weights) and m.expert_s == pytest.approx(experts)
    # one token picks 2 of 4 experts: half of them read; two tokens: 1 - (1/2)^2 = 3/4
    for tokens, touched in ((1, 0.5), (2, 0.75), (3, 0.875)):
        memory = weights + experts * touched
        assert m.step_time(tokens, tokens, 0.0, 0) == pytest.approx(max(memory, m.token_s * tokens)
                                                                       + m.seq_s * tokens)


def test_derived_coefficients_are_work_over_speed():
    f = EfficiencyFactors(hbm_efficiency=0.5, matmul_efficiency=0.25, attention_efficiency=0.5,
                          interconnect_efficiency=1.0, layer_cycles=1e5, allreduce_step_cycles=1e4,
                          seq_overhead_s=1e-4, prefill_floor_layer_s=1e-3, step_overhead_s=2e-3)
    m = latency_model(step_arithmetic(ModelArch.from_hf_config(DENSE, "dense"), 2, "bf16"), DEVICE, f)
    assert m.weight_s == pytest.approx((2 * 6144 + 2 * 12288 + 3200) * 2 / (1000e9 * 0.5))
    assert m.token_s == pytest.approx(2 * (2 * 6144 + 2 * 12288) / (100e12 * 0.25) + 640 / 100e9)
    assert m.seq_s == pytest.approx(2 * 3200 / (100e12 * 0.25) + 1e-4)
    assert m.prefill_attn_s == pytest.approx(4 * 16 * 2 * 2 / (100e12 * 0.5))
    assert m.decode_attn_s == pytest.approx(2 * 2 * 16 * 2 / (1000e9 * 0.5))
    assert m.step_s == pytest.approx(2e-3 + (2 * 1e5 + 10 * 1e4) / 1e9)
    assert m.prefill_floor_s == pytest.approx(2e-3)


def test_fp8_uses_the_fp8_rate_only_where_the_device_has_one():
    arch = ModelArch.from_hf_config(DENSE, "dense")
    f = EfficiencyFactors(matmul_efficiency=1.0)
    bf16 = latency_model(step_arithmetic(arch, 1, "bf16"), DEVICE, f)
    fp8 = latency_model(step_arithmetic(arch, 1, "fp8"), DEVICE, f)
    assert fp8.weight_s == pytest.approx(bf16.weight_s / 2)
    assert fp8.token_s == pytest.approx(bf16.token_s / 2)
    a100 = get_gpu("a100-sxm")
    assert latency_model(step_arithmetic(arch, 1, "fp8"), a100, f).token_s == pytest.approx(
        latency_model(step_arithmetic(arch, 1, "bf16"), a100, f).token_s)


def test_the_roofline_and_floor_are_off_in_fitted_models():
    lin = LatencyModel(0.02, 1e-4, 1e-3, 1e-8, 2e-6)
    assert lin.step_time(100, 3, 500.0, 0) == pytest.approx(0.02 + 1e-2 + 3e-3 + 5e-6)
    roof = LatencyModel(0.0, 1e-4, weight_s=0.01, prefill_floor_s=0.05)
    assert roof.step_time(10, 10, 0.0, 0) == pytest.approx(0.01)       # memory-bound decode
    assert roof.step_time(1000, 1, 1.0, 0) == pytest.approx(0.1)       # compute-bound prefill
    assert roof.step_time(10, 1, 1.0, 0) == pytest.approx(0.05)        # small prefill: the floor
    assert roof.step_time(10, 10, 0.0, 100) == pytest.approx(0.01)     # no floor without a prefill


@settings(max_examples=50, deadline=None)
@given(b=st.integers(1, 300), ctx=st.integers(1, 10**6), steps=st.integers(2, 200),
       weight=st.floats(1e-4, 0.05), token=st.floats(1e-6, 1e-3), expert=st.floats(0, 0.05),
       spill_at=st.floats(0, 400), spill=st.floats(0, 1e-4))
def test_decode_runs_keep_their_closed_form_with_roofline_terms(b, ctx, steps, weight, token, expert, spill_at,
                                                                 spill):
    m = LatencyModel(step_s=0.003, token_s=token, seq_s=1e-5, decode_attn_s=2e-7, weight_s=weight,
                     expert_s=expert, experts=64, experts_per_token=6, prefill_floor_s=0.04,
                     spill_tokens=spill_at, spill_token_s=spill)
    first, delta, total = m.decode_run(b, ctx, steps)
    each = [m.step_time(b, b, 0.0, ctx + b * k) for k in range(steps)]
    assert first == pytest.approx(each[0]) and delta == pytest.approx(each[1] - each[0])
    assert total == pytest.approx(sum(each), rel=1e-9)


def test_the_spill_term_is_a_hinge_in_the_step_tokens():
    m = LatencyModel(0.0, 1e-6, weight_s=1e-9, spill_tokens=1000.5, spill_token_s=1e-5)
    assert m.step_time(1000, 1, 1.0, 0) == pytest.approx(1000e-6)                  # all within L2
    assert m.step_time(1500, 1, 1.0, 0) == pytest.approx(1500e-6 + 499.5 * 1e-5)    # 499.5 tokens beyond
    assert m.step_time(1500, 1, 0.0, 0) == pytest.approx(1500e-6 + 499.5 * 1e-5)    # decodes too: same all-reduce
    with pytest.raises(ProfileError, match="needs weight_s > 0"):
        LatencyModel(0.01, 1e-6, spill_tokens=10, spill_token_s=1e-5)   # a linear (fitted) model has no spill


def test_the_spill_term_is_work_over_speed_for_llama_2_70b_on_h100():
    # Llama-2-70B (80 layers, hidden 8192, fp16) at TP 8 on H100 SXM (50 MB L2, 3,350 GB/s).
    a = step_arithmetic(load_model("llama-2-70b"), 8, "fp16")
    assert a.residual_bytes_per_token == 2 * 8192 * 2 == 32768       # reduced tensor + residual stream
    assert a.allreduce_bytes_per_token == 161 * 8192 * 2 * 14 / 8 == 4616192
    f = EfficiencyFactors(hbm_efficiency=0.9, allreduce_spill_cost=20.0)
    m = latency_model(a, get_gpu("h100-sxm"), f)
    assert m.spill_tokens == pytest.approx(50e6 / 32768) == pytest.approx(1525.8789)
    assert m.spill_token_s == pytest.approx(20 * 4616192 / (3350e9 * 0.9)) == pytest.approx(3.06215e-5, rel=1e-5)
    # 2,048 tokens: 522.12 tokens beyond L2 cost 16.0 ms more than the linear terms say
    assert m.step_time(2048, 1, 0.0, 0) - m.step_time(1525, 1, 0.0, 0) == pytest.approx(
        m.token_s * 523 + 3.06215e-5 * 522.1211, rel=1e-5)


@pytest.mark.parametrize("why, model, gpu, tp, factors", [
    ("no tensor parallelism, no all-reduce", "llama-3.1-8b", "h100-sxm", 1, None),
    ("a factor set from before the term", "llama-3.1-70b", "h100-sxm", 4, EfficiencyFactors()),
])
def test_the_spill_term_is_off_where_it_does_not_apply(why, model, gpu, tp, factors):
    prof = derive_profile(model, gpu, tp, factors=None if factors is None else FactorSet("old", factors))
    assert prof.model.spill_token_s == 0 and prof.model.spill_tokens == 0, why
    assert "spill_token_s" not in json.loads(prof.to_json())["coefficients"]


def test_a_tensor_parallel_derived_profile_writes_and_reads_its_spill_term(tmp_path):
    prof = derive_profile("llama-3.1-70b", "h100-sxm", 4)
    assert prof.model.spill_token_s > 0
    assert prof.model.spill_tokens == pytest.approx(50e6 / (2 * 8192 * 2))
    path = prof.save(tmp_path / "p.json")
    assert load_profile(str(path)).model == prof.model


def test_factor_sets_written_before_the_spill_factor_still_load(tmp_path):
    old = json.loads(load_factor_set().to_json())
    del old["factors"]["allreduce_spill_cost"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    assert FactorSet.from_json(path.read_text(), str(path)).factors.allreduce_spill_cost == 0.0


def test_every_shipped_gpu_has_an_l2_size_and_its_source():
    from sim.profiles.hardware import GPUS

    for name, spec in GPUS.items():
        assert spec.l2_cache_mb > 0 and "l2_cache_mb" in spec.sources, name
    assert (get_gpu("a100-sxm").l2_cache_mb, get_gpu("h100-sxm").l2_cache_mb) == (40, 50)


def test_the_power_capped_rows_are_the_h100_rows_times_1_3():
    # docs/derived-profiles.md excludes this slice from the accuracy target on this evidence.
    import pandas as pd

    raw = pd.read_csv(Path(__file__).resolve().parents[1] / "data" / "splitwise_perf_model.csv")
    h100 = raw[raw["hardware"] == "h100-80gb"].reset_index(drop=True)
    capped = raw[raw["hardware"] == "h100-80gb-pcap"].reset_index(drop=True)
    keys = ["model", "prompt_size", "batch_size", "token_size", "tensor_parallel"]
    assert (h100[keys] == capped[keys]).all().all()
    assert (capped["prompt_time"] / h100["prompt_time"]).round(9).eq(1.3).all()
    assert (capped["token_time"] == h100["token_time"]).all() and (capped["e2e_time"] == h100["e2e_time"]).all()


def test_fast_mode_equals_exact_stepping_with_a_derived_moe_profile():
    prof = derive_profile("qwen3-30b-a3b", "h100-sxm")
    trace = simple_trace([0.01 * i for i in range(60)], [300 + 37 * (i % 9) for i in range(60)],
                         [5 + 11 * (i % 7) for i in range(60)])
    runs = [simulate(trace, routing.build("least_load"), fleet(n=2, mode=mode, model=prof.model, blocks=400),
                     seed=0) for mode in ("exact", "fast")]
    assert all(r.status == "ok" for r in runs[0].records)
    assert record_differences(runs[0].records, runs[1].records) == []


def test_a_local_config_json_and_the_hf_cache_are_read_offline(tmp_path, monkeypatch):
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(MOE))
    for spec in (str(folder), str(folder / "config.json")):
        arch = load_model(spec)
        assert (arch.num_layers, arch.num_experts, arch.experts_per_token, arch.moe_intermediate_size) == (2, 4, 2, 32)
    cache = tmp_path / "hub"
    snap = cache / "models--acme--tiny-moe" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps(DENSE))
    (cache / "models--acme--tiny-moe" / "refs").mkdir()
    (cache / "models--acme--tiny-moe" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    arch = load_model("acme/tiny-moe")
    assert arch.name == "acme/tiny-moe" and arch.intermediate_size == 128 and "local HuggingFace cache" in arch.source


def test_shipped_architectures_match_published_sizes():
    # Parameter counts the model cards state (billions, rounded as they round them).
    published = {"llama-3.1-8b": 8.0, "llama-3.1-70b": 70.6, "qwen3-8b": 8.2, "qwen3-32b": 32.8,
                 "qwen3-30b-a3b": 30.5, "mixtral-8x7b": 46.7, "deepseek-v2-lite": 15.7, "gpt-oss-20b": 20.9,
                 "gpt-oss-120b": 116.8, "bloom-176b": 176.2, "mistral-7b": 7.25}
    for name, size in published.items():
        assert load_model(name).total_params() / 1e9 == pytest.approx(size, rel=0.01), name


@pytest.mark.parametrize("call, words", [
    (lambda: derive_profile("llama-3.1-8b", "h1000"), ["unknown GPU 'h1000'", "h100-sxm", "l40s", "mi300x"]),
    (lambda: derive_profile("llama-9", "h100"), ["unknown model 'llama-9'", "llama-3.1-8b", "config.json"]),
    (lambda: derive_profile("llama-3.1-8b", "h100", dtype="fp7"), ["unknown dtype 'fp7'", "bf16", "fp8"]),
    (lambda: derive_profile("llama-3.1-8b", "h100", tp=3), ["tensor parallel 3", "32 attention heads"]),
    (lambda: derive_profile("llama-3.1-70b", "l4"), ["does not fit", "larger tensor parallel"]),
    (lambda: derive_profile("llama-3.1-8b", "h100", factors="nope"), ["unknown efficiency-factor set", "gpu-splitwise"]),
    (lambda: load_profile({"model": "llama-3.1-8b", "gpu": "h100", "tpp": 2}), ["unknown key", "tpp", "allowed"]),
    (lambda: load_profile({"gpu": "h100"}), ["needs model"]),
])
def test_bad_input_names_the_allowed_values(call, words):
    with pytest.raises((DeriveError, ProfileError)) as exc:
        call()
    for w in words:
        assert w in str(exc.value)


def test_a_derived_profile_round_trips_loads_and_simulates(tmp_path):
    prof = load_profile({"model": "llama-3.1-8b", "gpu": "l40s", "tp": 1, "dtype": "bf16"})
    assert prof.source["kind"] == "derived" and prof.provisional
    assert prof.engine.max_model_len == 131072 and prof.engine.num_kv_blocks > 1000
    path = prof.save(tmp_path / "p.json")
    assert load_profile(str(path)) == prof
    doc = json.loads(path.read_text())
    assert doc["schema_version"] == 1 and "weight_s" in doc["coefficients"]
    trace = simple_trace([0.0, 5.0], 1000, 50)
    res = simulate(trace, routing.build("round_robin"), fleet(n=1, model=prof.model, blocks=2000, budget=2048))
    ttft, tpot = prof.model.single_request(1000, 50, max_num_batched_tokens=2048)
    for r in res.records:
        assert r.first_token_s - r.arrival_s == pytest.approx(ttft, rel=1e-9)
        assert (r.last_token_s - r.first_token_s) / 49 == pytest.approx(tpot, rel=1e-9)


def test_fitted_profiles_keep_their_five_coefficient_json():
    """Fitted profiles write the five coefficients, and the matmuls' floor only where it is set."""
    five = {"step_s", "token_s", "seq_s", "prefill_attn_s", "decode_attn_s"}
    floored = 0
    for name in shipped_profiles():
        p = load_profile(name)
        if p.source.get("kind") == "derived":
            continue
        doc = json.loads(p.to_json())
        assert set(doc["coefficients"]) - {"matmul_floor_s"} == five, name
        if "matmul_floor_s" in doc["coefficients"]:
            floored += 1
            assert doc["coefficients"]["matmul_floor_s"] > 0
        assert "max_model_len" not in doc["engine"]
    assert floored >= 1  # the 2026-12-04 fits of small and mid


def test_shipped_derived_profiles_are_what_derive_writes_today():
    # Regenerate with the command in each profile's source.command (into sim/profiles/).
    derived = [n for n in shipped_profiles() if load_profile(n).source.get("kind") == "derived"]
    assert len(derived) >= 4
    for name in derived:
        shipped = load_profile(name)
        spec = shipped.source["spec"]
        if spec["gpu"].startswith("cpu"):
            continue  # measured on a particular machine: see test_sim_derived_cpu
        fresh = derive_profile(spec["model"], spec["gpu"], spec["tp"], spec["dtype"], factors=spec["factors"],
                               name=name)
        assert fresh.to_json() == shipped.to_json(), name


def test_list_profiles_shows_fitted_and_derived(capsys):
    from sim.cli import main as sim_main

    assert sim_main(["--list-profiles"]) == 0
    out = capsys.readouterr().out
    assert "h100-llama2-70b-tp4" in out and "derived-llama-2-70b-h100-sxm-tp4" in out
    assert " fitted " in out and " derived " in out


def test_cli_derive_writes_a_profile_and_lists(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert profiles_main(["derive", "--model", "mixtral-8x7b", "--gpu", "h100", "--tp", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "TPOT" in text and "experts" in text
    prof = LatencyProfile.from_json(out.read_text(), str(out))
    assert prof.model.experts == 8 and prof.model.experts_per_token == 2
    assert profiles_main(["gpus", "--sources"]) == 0
    assert "sparsity figure halved" in capsys.readouterr().out
    assert profiles_main(["derive", "--model", "x", "--gpu", "h100"]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_the_shipped_factor_set_says_where_it_was_fitted():
    fset = load_factor_set()
    assert fset.name == "gpu-splitwise" and "splitwise" in fset.source["data"]
    assert fset.fit["rows"] > 200
    assert 0 < fset.factors.matmul_efficiency <= 1


SCENARIO = """
name = "derived"
num_requests = 10
[workload]
source = "synthetic"
[[cluster.groups]]
name = "fast"
count = 2
profile = { model = "llama-3.1-8b", gpu = "h100-sxm", tp = 1, dtype = "bf16" }
[[cluster.groups]]
name = "slow"
profile = PROFILE
[router]
strategies = ["round_robin"]
"""


def _scenario(profile: str, overrides=None):
    from scenarios import parse_scenario

    return parse_scenario(SCENARIO.replace("PROFILE", profile), "test.toml", overrides or {})


def test_a_scenario_group_names_a_derived_profile_inline():
    from scenarios import expand_grid
    from sim.fleet import cluster_config

    sc = _scenario('"cpu-tiny"')
    assert sc.cluster.groups[0].profile == {"model": "llama-3.1-8b", "gpu": "h100-sxm", "tp": 1, "dtype": "bf16"}
    config = cluster_config(expand_grid(sc)[0].scenario)
    fast = config.backends[0].profile
    assert fast.source["kind"] == "derived" and fast.engine.max_num_seqs == 1024
    assert config.backends[0].engine.max_num_batched_tokens == 8192
    assert config.backends[0].profile is config.backends[1].profile  # derived once per spec


def test_derived_profiles_are_a_grid_axis():
    from scenarios import expand_grid
    from sim.fleet import cluster_config

    sc = _scenario('[{ model = "llama-3.1-8b", gpu = "l40s" }, { model = "llama-3.1-8b", gpu = "l4" }]')
    points = expand_grid(sc)
    assert [p.point_id.split("-")[0] for p in points] == ["slow.profile_llama", "slow.profile_llama"]
    assert "l40s" in points[0].point_id and "l4-tp1" in points[1].point_id
    kinds = {cluster_config(p.scenario).backends[-1].profile.name for p in points}
    assert kinds == {"derived-llama-3.1-8b-l40s-tp1", "derived-llama-3.1-8b-l4-tp1"}


@pytest.mark.parametrize("profile, key, words", [
    ('{ model = "llama-3.1-8b", gpu = "l40s", tpp = 2 }', "profile.tpp", "did you mean 'tp'"),
    ('{ gpu = "l40s" }', "profile.model", "missing required key"),
    ('{ model = "llama-3.1-8b", gpu = "l40s", tp = "2" }', "profile.tp", "expected an integer"),
    ("3", "profile", "derived profile"),
    ("[]", "profile", "empty list"),
])
def test_a_bad_derived_profile_table_fails_naming_the_key(profile, key, words):
    from scenarios import ScenarioError

    with pytest.raises(ScenarioError) as exc:
        _scenario(profile)
    assert f"cluster.groups[1].{key}" in str(exc.value) and words in str(exc.value)


def test_unknown_names_in_a_derived_profile_fail_before_the_run(tmp_path, capsys):
    from sim.cli import main as sim_main

    rc = sim_main(["mixed-fleet", "--out", str(tmp_path / "run"), "--quiet", "--set",
                   'cluster.groups.l40s.profile={model="llama-3.1-8b", gpu="l40x"}'])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown GPU 'l40x'" in err and "cluster.groups.l40s.profile" in err
    assert not (tmp_path / "run").exists()


def test_a_derived_spec_travels_as_json_text():
    # live mode hands emulators the spec as JSON on their command line
    spec = {"model": "qwen3-8b", "gpu": "h200", "tp": 1}
    assert load_profile(json.dumps(spec)) == load_profile(spec)
    with pytest.raises(ProfileError, match="not"):
        load_profile("{model: qwen}")


def test_the_factor_fit_recovers_known_factors():
    # Step times generated by known factors on Splitwise's step compositions: the fit,
    # started elsewhere, must find factors that reproduce them (and the identifiable ones).
    from dataclasses import replace

    from sim.profiles.fit import START, fit_factors, predict, splitwise_steps

    steps = splitwise_steps(Path(__file__).resolve().parents[1] / "data" / "splitwise_perf_model.csv")
    steps = steps[steps["model"] == "llama-2-70b"].reset_index(drop=True)
    truth = replace(START, matmul_efficiency=0.45, attention_efficiency=0.35, interconnect_efficiency=0.6,
                    layer_cycles=2.5e5, allreduce_step_cycles=8e3, seq_overhead_s=2e-4, prefill_floor_layer_s=4e-4)
    steps["seconds"] = predict(steps, truth)
    fitted, diag = fit_factors(steps, prior_weight=0.0)
    assert diag["median_abs_rel_error"]["prefill"] < 0.01 and diag["median_abs_rel_error"]["decode"] < 0.01
    for name in ("matmul_efficiency", "layer_cycles", "seq_overhead_s"):
        assert getattr(fitted, name) == pytest.approx(getattr(truth, name), rel=0.05), name


def test_a_measured_cpu_is_a_device(tmp_path):
    from sim.profiles.cpu import measure_cpu
    from sim.profiles.hardware import HardwareError, device_from_dict, load_device

    doc = measure_cpu(threads=1, memory_gib=0.5, seconds=0.05)
    assert doc["fp32_tflops"] > 0 and doc["memory_bw_gbs"] > 0 and doc["measured"]
    assert "loadavg" in doc["sources"]
    path = tmp_path / "cpu.json"
    path.write_text(json.dumps(doc))
    device = load_device(str(path))
    assert device.measured and device.dtypes() == ["fp32"]
    prof = derive_profile(ModelArch.from_hf_config({**DENSE, "torch_dtype": "float32"}, "dense"), device,
                          kv_cache_gib=0.5, block_size=32)
    assert prof.source["factors"]["name"] == "cpu-vllm"  # the CPU factor set when none is named
    assert prof.engine.num_kv_blocks == int(0.5 * 2**30 // (2 * 2 * 2 * 16 * 4)) // 32
    with pytest.raises(HardwareError, match="lacks"):
        device_from_dict({"name": "x"}, "x.json")
    with pytest.raises(HardwareError, match="does not exist"):
        load_device(str(tmp_path / "nope.json"))
    with pytest.raises(DeriveError, match="dtype bf16 is not modelled on cpu-1t; allowed: fp32"):
        derive_profile(ModelArch.from_hf_config(DENSE, "dense"), device, kv_cache_gib=0.5)


def test_the_derived_cpu_profiles_sit_beside_the_fitted_ones():
    for shape in ("tiny", "small"):
        derived, fitted = load_profile(f"derived-cpu-{shape}"), load_profile(f"cpu-{shape}")
        assert derived.engine.num_kv_blocks == fitted.engine.num_kv_blocks  # 1 GiB of KV, as served
        assert derived.source["factors"]["name"] == "cpu-vllm"
        ttft_d, tpot_d = derived.model.single_request(1024, 64, max_num_batched_tokens=2048)
        ttft_f, tpot_f = fitted.model.single_request(1024, 64, max_num_batched_tokens=2048)
        # recorded in docs/derived-profiles.md: within 20% of the fitted profiles alone
        assert abs(ttft_d / ttft_f - 1) < 0.2 and abs(tpot_d / tpot_f - 1) < 0.2
