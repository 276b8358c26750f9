"""Derived profiles for the vLLM-CPU shapes, next to the profiles fitted to real vLLM-CPU.

    python benchmarks/derived_cpu_profiles.py [--device runs/profiles/cpu-device.json] [--write]

1. The CPU "datasheet": this machine's float32 matmul throughput and memory
   bandwidth on one thread (``python -m sim.profiles measure-cpu``; measured here
   unless ``--device`` names a saved one). On a shared machine the figures are low
   and noisy: the load average is printed with them.
2. The shapes' architecture: the ``config.json`` that ``python -m calibrate serve
   --shape tiny|small`` writes (calibrate/modeldir.py), float32.
3. Reference step times: the shipped fitted profiles ``cpu-tiny`` and ``cpu-small``
   (fitted by ``calibrate fit`` to real vLLM 0.32 serving those shapes) evaluated on a
   grid of steps like the profiling saw: one prompt of 32..2048 tokens, and decode
   batches of 1..64 sequences at 128..1024 tokens of context.
4. Three derived variants, scored on both shapes: the bare roofline (measured
   throughput and bandwidth, no overheads); factors fitted on ``cpu-tiny``'s steps and
   used unchanged for ``cpu-small`` (held out); and the GPU factor set, for contrast.

``--write`` stores the factors fitted on cpu-tiny as ``sim/profiles/factor_sets/cpu-vllm.json``
and the two derived profiles as ``sim/profiles/derived-cpu-{tiny,small}.json``.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from pathlib import Path

import pandas as pd

from calibrate.modeldir import get_shape, llama_config
from sim.latency import load_profile
from sim.profiles import ModelArch, derive_profile
from sim.profiles.factors import EfficiencyFactors, FactorSet, load_factor_set
from sim.profiles.fit import error_table, fit_factors
from sim.profiles.hardware import device_from_dict

REPO = Path(__file__).resolve().parents[1]
SHAPES = ("tiny", "small")
CPU_FREE = ("matmul_efficiency", "attention_efficiency", "layer_cycles", "seq_overhead_s", "step_overhead_s")
CPU_START = EfficiencyFactors(hbm_efficiency=1.0, matmul_efficiency=1.0, attention_efficiency=0.3,
                              interconnect_efficiency=1.0, layer_cycles=1e5, allreduce_step_cycles=0.0,
                              seq_overhead_s=1e-3, prefill_floor_layer_s=0.0, step_overhead_s=5e-3)
BARE = EfficiencyFactors(hbm_efficiency=1.0, matmul_efficiency=1.0, attention_efficiency=1.0,
                         interconnect_efficiency=1.0)


def reference_steps(shape: str) -> pd.DataFrame:
    """Steps like the profiling runs saw, timed by the fitted profile of ``shape``."""
    model = load_profile(f"cpu-{shape}").model
    rows = []
    for p in (32, 64, 128, 256, 512, 1024, 2048):
        w = p * (p + 1) / 2.0
        rows.append(("prefill", p, 1, w, 0))
    for b in (1, 2, 4, 8, 16, 32, 64):
        for ctx in (128, 512, 1024):
            rows.append(("decode", b, b, 0.0, b * ctx))
    frame = pd.DataFrame(rows, columns=["kind", "num_tokens", "num_seqs", "prefill_work", "decode_context"])
    frame["seconds"] = [model.step_time(t, s, w, c) for _, t, s, w, c in frame.itertuples(index=False)]
    return frame.assign(model=f"llama-{shape}", gpu="cpu", tp=1, dtype="fp32", slice=f"cpu-{shape}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", help="a device JSON from `python -m sim.profiles measure-cpu` "
                                         "(default: measure now)")
    parser.add_argument("--write", action="store_true", help="update the shipped cpu-vllm factors and "
                                                              "derived-cpu-* profiles")
    args = parser.parse_args(argv)
    if args.device:
        doc = json.loads(Path(args.device).read_text())
    else:
        from sim.profiles.cpu import measure_cpu
        doc = measure_cpu(threads=1, memory_gib=1.0, seconds=3.0)
    device = device_from_dict({**doc, "name": "cpu"}, args.device or "measured")
    print(f"device: {device.fp32_tflops * 1e3:.1f} GFLOP/s float32 matmul, {device.memory_bw_gbs:.1f} GB/s, "
          f"{device.clock_mhz:.0f} MHz; {device.sources.get('loadavg', '')}; load average now "
          f"{os.getloadavg()}\n")
    archs = {f"llama-{s}": ModelArch.from_hf_config(llama_config(get_shape(s)), f"llama-{s}",
                                                    source="calibrate/modeldir.py") for s in SHAPES}
    devices = {"cpu": device}
    steps = {s: reference_steps(s) for s in SHAPES}

    fitted, diag = fit_factors(steps["tiny"], start=CPU_START, free=CPU_FREE, archs=archs, devices=devices)
    print("factors fitted on cpu-tiny's steps: " + ", ".join(f"{k} {v:.4g}" for k, v in vars(fitted).items()))
    variants = [("bare roofline (measured peaks, no overheads)", BARE),
                ("factors fitted on cpu-tiny (cpu-small held out)", fitted),
                ("GPU factor set gpu-splitwise", load_factor_set().factors)]
    print("\n| derived variant | shape | prefill median | prefill p90 | decode median | decode p90 |\n"
          "|---|---|---|---|---|---|")
    for title, factors in variants:
        table = error_table(pd.concat(steps.values()), factors, archs=archs, devices=devices)
        for r in table.itertuples(index=False):
            print(f"| {title} | {r.slice} | {r.prefill_median:.1%} | {r.prefill_p90:.1%} | "
                  f"{r.decode_median:.1%} | {r.decode_p90:.1%} |")

    fset = FactorSet(
        name="cpu-vllm", factors=fitted,
        description="fitted on the shipped cpu-tiny profile's step times (vLLM-CPU 0.32, float32, one core); "
                    "efficiencies are relative to the measured throughput and bandwidth",
        source={"data": "sim/profiles/cpu-tiny.json (fitted to tests/data/cpu-tiny-profiling.csv)",
                "command": "python benchmarks/derived_cpu_profiles.py --write", "device": doc},
        fit=diag)
    print("\n| shape | coefficient | fitted profile | derived (cpu-tiny factors) |\n|---|---|---|---|")
    derived = {}
    for s in SHAPES:
        prof = derive_profile(archs[f"llama-{s}"], device, 1, "fp32", factors=fset, kv_cache_gib=1.0,
                              block_size=32, max_num_seqs=256, max_num_batched_tokens=2048,
                              name=f"derived-cpu-{s}")
        derived[s] = prof
        fit = load_profile(f"cpu-{s}").model
        for c in ("step_s", "token_s", "seq_s", "prefill_attn_s", "decode_attn_s"):
            print(f"| {s} | {c} | {getattr(fit, c):.3g} | {getattr(prof.model, c):.3g} |")
        print(f"| {s} | weight_s (roofline floor) | - | {prof.model.weight_s:.3g} |")
    print("\n| shape | request (in/out) | fitted TTFT | derived TTFT | fitted TPOT | derived TPOT |\n"
          "|---|---|---|---|---|---|")
    for s in SHAPES:
        fit = load_profile(f"cpu-{s}").model
        for inp, out in ((128, 64), (1024, 64), (2048, 16)):
            f_ttft, f_tpot = fit.single_request(inp, out, max_num_batched_tokens=2048)
            d_ttft, d_tpot = derived[s].model.single_request(inp, out, max_num_batched_tokens=2048)
            print(f"| {s} | {inp}/{out} | {f_ttft * 1e3:.0f} ms | {d_ttft * 1e3:.0f} ms ({d_ttft / f_ttft - 1:+.0%}) "
                  f"| {f_tpot * 1e3:.1f} ms | {d_tpot * 1e3:.1f} ms ({d_tpot / f_tpot - 1:+.0%}) |")
    if args.write:
        fset.save(REPO / "sim" / "profiles" / "factor_sets" / "cpu-vllm.json")
        for s, prof in derived.items():
            src = dict(prof.source)
            src["command"] = "python benchmarks/derived_cpu_profiles.py --write"
            src["spec"] = {**src["spec"], "gpu": "cpu (measured, see source.device)"}
            src["model"] = {**src["model"], "source": f"calibrate/modeldir.py shape {s!r} (llama_config)"}
            out = replace(prof, source=src, hardware=f"1 thread of {doc['description'].split(' of ', 1)[-1]}")
            out.save(REPO / "sim" / "profiles" / f"derived-cpu-{s}.json")
        print("\nwrote sim/profiles/factor_sets/cpu-vllm.json, sim/profiles/derived-cpu-{tiny,small}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
