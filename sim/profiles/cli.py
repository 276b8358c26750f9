"""``python -m sim.profiles``: derive latency profiles, list what can be derived, fit efficiency factors."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

EPILOG = """\
examples:
  python -m sim.profiles derive --model llama-3.1-8b --gpu l40s
  python -m sim.profiles derive --model meta-llama/Llama-3.1-70B-Instruct --gpu h100-sxm --tp 4 --dtype fp8
  python -m sim.profiles derive --model ./my-model/config.json --gpu h200 --out profiles/mine.json
  python -m sim.profiles models            # shipped architectures
  python -m sim.profiles gpus --sources    # datasheet figures and where each comes from
  python -m sim.profiles fit-factors tests/data/splitwise_perf_model.csv --out my-factors.json
  python -m sim.profiles measure-cpu --out runs/profiles/cpu-device.json

In a scenario, a cluster group can name the same thing inline:
  profile = { model = "llama-3.1-8b", gpu = "l40s", tp = 1, dtype = "bf16" }
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sim.profiles",
        description="Latency profiles derived from a model's architecture (a shipped model, a local "
                    "config.json, or a HuggingFace id in the local cache) and a GPU's datasheet, with "
                    "a few efficiency factors fitted on measurements. Not measured: see "
                    "docs/derived-profiles.md for how accurate they are.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("derive", help="write a derived latency profile (the same JSON as a fitted one)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d.add_argument("--model", required=True,
                   help="shipped model name (`models`), path to a config.json or its folder, or a "
                        "HuggingFace id already in the local cache (nothing is downloaded)")
    d.add_argument("--gpu", required=True,
                   help="device name (`gpus`), or a device JSON written by `measure-cpu`")
    d.add_argument("--tp", type=int, default=1, help="tensor parallel size (GPUs per replica)")
    d.add_argument("--dtype", default="auto",
                   help="weight storage type: auto (the checkpoint's), bf16, fp16, fp8, int8, int4, mxfp4, fp32")
    d.add_argument("--factors", default=None,
                   help="efficiency-factor set: a shipped name or a factor .json (default: gpu-splitwise; "
                        "cpu-vllm for a measured CPU device)")
    d.add_argument("--gpu-memory-utilization", type=float, default=None,
                   help="vLLM's gpu_memory_utilization (default: 0.92, vLLM 0.32's default)")
    d.add_argument("--max-num-seqs", type=int, default=0, help="engine limit (0: vLLM's default for the device)")
    d.add_argument("--max-num-batched-tokens", type=int, default=0,
                   help="engine limit (0: vLLM's default for the device)")
    d.add_argument("--block-size", type=int, default=16, help="KV-cache block size in tokens")
    d.add_argument("--kv-cache-gib", type=float, default=0.0,
                   help="fix the KV cache size instead of deriving it from memory (vLLM-CPU's "
                        "VLLM_CPU_KVCACHE_SPACE)")
    d.add_argument("--name", default=None, help="profile name (default: derived-<model>-<gpu>-tp<N>)")
    d.add_argument("--out", default=None,
                   help="where to write the profile JSON (default: runs/profiles/<name>.json; '-' prints it)")

    m = sub.add_parser("models", help="list the shipped model architectures")
    m.add_argument("--json", action="store_true", help="print the facts as JSON")
    g = sub.add_parser("gpus", help="list the shipped device datasheets")
    g.add_argument("--sources", action="store_true", help="also print where each figure comes from")

    f = sub.add_parser("fit-factors", help="fit efficiency factors on measured step times (Splitwise's CSV format)")
    f.add_argument("csv", help="Splitwise-format perf_model.csv (tests/data/splitwise_perf_model.csv)")
    f.add_argument("--model", action="append", default=None,
                   help="keep only this model (repeatable; default: llama-2-70b)")
    f.add_argument("--hardware", action="append", default=None,
                   help="keep only this hardware label of the CSV (repeatable; default: a100-80gb, h100-80gb)")
    f.add_argument("--tp", action="append", type=int, default=None, help="keep only this TP size (repeatable)")
    f.add_argument("--name", default="gpu-splitwise", help="name of the factor set")
    f.add_argument("--out", required=True, help="factor JSON to write")

    c = sub.add_parser("measure-cpu", help="measure this CPU's matmul throughput and memory bandwidth "
                                           "(a device JSON for `derive --gpu`)")
    c.add_argument("--threads", type=int, default=1, help="threads, as vLLM-CPU pins per instance")
    c.add_argument("--memory-gib", type=float, default=1.0,
                   help="KV-cache space the CPU instance gets (VLLM_CPU_KVCACHE_SPACE, GiB)")
    c.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    c.add_argument("--out", required=True, help="device JSON to write")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    from sim.profiles.errors import DeriveError

    try:
        return {"derive": _derive, "models": _models, "gpus": _gpus, "fit-factors": _fit,
                "measure-cpu": _measure_cpu}[args.command](args)
    except (DeriveError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _derive(args) -> int:
    from sim.profiles.derive import GPU_MEMORY_UTILIZATION, derive_profile
    from sim.profiles.hardware import load_device

    device = load_device(args.gpu)
    factors = args.factors
    profile = derive_profile(
        args.model, device, args.tp, args.dtype, factors=factors,
        gpu_memory_utilization=args.gpu_memory_utilization or GPU_MEMORY_UTILIZATION,
        max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
        block_size=args.block_size, kv_cache_gib=args.kv_cache_gib, name=args.name)
    if args.out == "-":
        sys.stdout.write(profile.to_json())
        return 0
    out = Path(args.out or f"runs/profiles/{profile.name}.json")
    profile.save(out)
    m, e = profile.model, profile.engine
    print(f"{profile.name}: {profile.description}")
    print(f"  step {m.step_s * 1e3:.2f} ms + max(weights {m.weight_s * 1e3:.2f} ms"
          + (f" + experts {m.expert_s * 1e3:.2f} ms x touched" if m.expert_s else "")
          + f", {m.token_s * 1e6:.2f} us/token) + {m.seq_s * 1e6:.1f} us/seq; attention "
          f"{m.prefill_attn_s * 1e9:.3f} ns/pair prefill, {m.decode_attn_s * 1e9:.2f} ns/context token decode"
          + (f"; prefill floor {m.prefill_floor_s * 1e3:.1f} ms" if m.prefill_floor_s else "")
          + (f"; all-reduces beyond L2: +{m.spill_token_s * 1e6:.1f} us/token past {m.spill_tokens:.0f} tokens/step"
             if m.spill_token_s else ""))
    ttft, tpot = m.single_request(1024, 128, max_num_batched_tokens=e.max_num_batched_tokens)
    print(f"  one request alone, 1024 in / 128 out: TTFT {ttft * 1e3:.0f} ms, TPOT {tpot * 1e3:.1f} ms")
    print(f"  KV cache {profile.source['kv_tokens']} tokens ({e.num_kv_blocks} blocks of {e.block_size}), "
          f"max_num_seqs {e.max_num_seqs}, max_num_batched_tokens {e.max_num_batched_tokens}, "
          f"max_model_len {e.max_model_len}")
    for note in profile.source.get("notes", []):
        print(f"  note: {note}")
    print(f"  -> {out}  (not measured: see docs/derived-profiles.md)")
    return 0


def _models(args) -> int:
    from sim.profiles.model_catalog import MODELS, catalog_model

    rows = []
    for short, (hf_id, _, remark) in MODELS.items():
        arch = catalog_model(short)
        rows.append((short, hf_id, arch, remark))
    if args.json:
        from dataclasses import asdict
        print(json.dumps({s: {**asdict(a), "huggingface_id": h} for s, h, a, _ in rows}, indent=2))
        return 0
    for short, hf_id, arch, remark in rows:
        print(f"{short:18s} {hf_id:38s} {arch.summary()}" + (f"; {remark}" if remark else ""))
    print("\nAny other model: pass its config.json (or a HuggingFace id in the local cache) to --model.")
    return 0


def _gpus(args) -> int:
    from sim.profiles.hardware import GPUS

    for name, spec in GPUS.items():
        print(f"{name:10s} {spec.description:36s} {spec.summary()}")
        if args.sources:
            for key, src in spec.sources.items():
                print(f"{'':12s}{key}: {src}")
            for note in spec.notes:
                print(f"{'':12s}note: {note}")
    return 0


def _fit(args) -> int:
    from sim.profiles.factors import FactorSet
    from sim.profiles.fit import error_table, fit_factors, splitwise_steps

    steps = splitwise_steps(args.csv)
    models = args.model or ["llama-2-70b"]
    hardware = args.hardware or ["a100-80gb", "h100-80gb"]
    keep = steps["model"].isin(models) & steps["hardware"].isin(hardware)
    if args.tp:
        keep &= steps["tp"].isin(args.tp)
    train = steps[keep]
    if train.empty:
        raise SystemExit(f"error: no rows for models {models}, hardware {hardware}, tp {args.tp}")
    factors, diag = fit_factors(train)
    train = train.assign(slice=train["model"] + "/" + train["hardware"] + "/tp" + train["tp"].astype(str))
    table = error_table(train, factors)
    diag["per_slice"] = table.round(4).to_dict(orient="records")
    fset = FactorSet(
        name=args.name, factors=factors,
        description=f"fitted on {len(train)} measured steps of {', '.join(models)} on {', '.join(hardware)}"
                    + (f", TP {args.tp}" if args.tp else ""),
        source={"data": str(args.csv), "models": models, "hardware": hardware, "tp": args.tp or "all",
                "command": "python -m sim.profiles " + " ".join(args.argv)},
        fit=diag)
    fset.save(args.out)
    for k, v in vars(factors).items():
        print(f"  {k:24s} {v:.6g}")
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"-> {args.out}")
    return 0


def _measure_cpu(args) -> int:
    from sim.profiles.cpu import measure_cpu

    device = measure_cpu(threads=args.threads, memory_gib=args.memory_gib, seconds=args.seconds)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(device, indent=2) + "\n")
    print(json.dumps(device, indent=2))
    print(f"-> {args.out}")
    return 0
