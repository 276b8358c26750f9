"""Which prefill mechanisms help derived profiles predict held-out GPU step times, and which do not.

    python benchmarks/derived_prefill_mechanisms.py [--csv tests/data/splitwise_perf_model.csv]

The evidence behind the choices in docs/derived-profiles.md ("What changed in the
prefill model"). Each candidate mechanism is a variant of the step-time formula of
``sim.profiles.derive`` evaluated here by a small vectorised harness (the harness's
``shipped`` variant is checked against ``sim.profiles.fit.predict`` to 1e-9, so the
variants differ from the shipped model only where they say). Every variant is fitted
the same way as ``sim.profiles.fit.fit_factors`` (robust relative errors, log-space
factors, weak prior) on the training slices of the two experiments of
``benchmarks/derived_profile_accuracy.py`` and scored on their held-out slices.
Printed:

1. per variant: held-out prefill and decode medians (median over slices), how many
   held-out slices meet 10%, and the in-sample mean prefill error (which a
   variant's choice may legitimately use: it sees no held-out data);
2. every slice fitted on itself with the shipped form: the efficiencies each GPU
   reaches (if a mechanism is right, they stop depending on the tensor-parallel size);
3. from the measurements alone: a batch of 512-token prompts against one prompt of
   the same total length, per slice;
4. from the measurements alone: the per-token cost of batches of 512-token prompts
   up to 2,048 tokens per step and from 4,096 on (least-squares slopes), per slice.

Deterministic; a few seconds.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from derived_profile_accuracy import SYNTHETIC, TARGET, experiments, slices  # noqa: E402

from sim.profiles.arithmetic import step_arithmetic  # noqa: E402
from sim.profiles.factors import EfficiencyFactors  # noqa: E402
from sim.profiles.fit import FITTED, START, predict, splitwise_steps  # noqa: E402
from sim.profiles.hardware import get_gpu  # noqa: E402
from sim.profiles.model_catalog import catalog_model  # noqa: E402

#: Streaming multiprocessors, for the wave-quantisation variant only (NVIDIA's A100 and
#: H100 architecture whitepapers: 108 SMs on A100, 132 on H100 SXM5).
SMS = {"a100-sxm": 108, "h100-sxm": 132}
#: FlashAttention-2's fraction of dense peak: ~35% on H100 (Shah et al., FlashAttention-3,
#: 2024, abstract) against up to ~70% on A100 (Dao, FlashAttention-2, 2023, abstract).
FA2_HOPPER_RATIO = 0.35 / 0.70
SMALL = 2048

VARIANTS = {
    "without spill term (the model before)": {"spill": False},
    "shipped: spill term, HBM-priced, threshold L2 / (2 x hidden x 2 B) tokens": {},
    "spill priced at the link bandwidth instead of HBM": {"spill_link": True},
    "spill threshold L2 / (hidden x 2 B): the reduced tensor alone": {"one_tensor": True},
    "+ GEMM wave quantisation (128 x 128 tiles over the SM count)": {"waves": True},
    "+ prefill floor counted in GPU cycles": {"floor_cycles": True},
    "+ Hopper attention at FlashAttention-2's H100/A100 ratio of peak": {"fa2_hopper": True},
    "all-reduce latency per all-reduce, not per ring step": {"flat_allreduce_latency": True},
    "all-reduce roofline: max(ring-step latency, bytes / link) instead of their sum": {"allreduce_max": True},
}


@dataclass
class Group:
    """One (model, GPU, TP) slice's rows and the arithmetic they share."""

    idx: np.ndarray
    gpu: str
    tp: int
    arith: object
    device: object
    T: np.ndarray
    S: np.ndarray
    W: np.ndarray
    C: np.ndarray
    prefill: np.ndarray
    padded_flops: np.ndarray  # per step, wave-quantised matmul FLOPs (variant "waves")


def gemm_shapes(arch, tp: int) -> list[tuple[float, float]]:
    """(N, K) per GPU of a layer's four GEMMs: QKV, output projection, MLP up (and gate), MLP down."""
    h = arch.hidden_size
    q = arch.num_heads * arch.head_dim / tp
    up = (2 if arch.gated_mlp else 1) * arch.intermediate_size / tp
    return [(q + 2 * arch.head_dim * arch.kv_heads_per_gpu(tp), h), (h, q), (up, h), (h, arch.intermediate_size / tp)]


def groups_of(steps: pd.DataFrame) -> list[Group]:
    out = []
    for (model, gpu, tp), g in steps.groupby(["model", "gpu", "tp"], sort=False):
        arch = catalog_model(model)
        T = g["num_tokens"].to_numpy(float)
        padded = np.zeros_like(T)
        for n, k in gemm_shapes(arch, int(tp)):
            bm = np.clip(2 ** np.ceil(np.log2(np.maximum(T, 1))), 16, 128)  # smaller row tiles for small M
            waves = np.ceil(np.ceil(T / bm) * math.ceil(n / 128) / SMS[gpu])
            padded += waves * SMS[gpu] * bm * 128 * 2 * k
        out.append(Group(g.index.to_numpy(), gpu, int(tp), step_arithmetic(arch, int(tp), "fp16"), get_gpu(gpu), T,
                         g["num_seqs"].to_numpy(float), g["prefill_work"].to_numpy(float),
                         g["decode_context"].to_numpy(float), (g["kind"] == "prefill").to_numpy(),
                         padded * arch.num_layers))
    return out


def step_times(G: Group, f: EfficiencyFactors, v: dict) -> np.ndarray:
    """The step time of every row of G: sim.profiles.derive's formula, changed only where ``v`` says."""
    a, d = G.arith, G.device
    peak = d.matmul_flops("fp16")
    bw = d.memory_bw_gbs * 1e9 * f.hbm_efficiency
    clock = d.clock_mhz * 1e6
    link = d.interconnect_gbs * 1e9 * f.interconnect_efficiency
    mm, at = peak * f.matmul_efficiency, peak * f.attention_efficiency
    if v.get("fa2_hopper") and G.gpu.startswith("h100"):
        at *= FA2_HOPPER_RATIO
    steps = a.allreduce_steps if not v.get("flat_allreduce_latency") else (2 * a.layers + 1) * 2 * (G.tp > 1)
    latency = steps * f.allreduce_step_cycles / clock
    fixed = f.step_overhead_s + a.layers * f.layer_cycles / clock
    flops = G.padded_flops if v.get("waves") else a.matmul_flops_per_token * G.T
    transfer = G.T * a.allreduce_bytes_per_token / link if a.allreduce_bytes_per_token else 0.0 * G.T
    if v.get("allreduce_max"):
        fixed, compute = fixed + np.maximum(latency - transfer, 0.0), flops / mm + transfer
    else:
        fixed, compute = fixed + latency, flops / mm + transfer
    t = (fixed + np.maximum(a.dense_weight_bytes / bw, compute) + G.W * a.attention_flops_per_pair / at
         + G.C * max(a.kv_bytes_per_context_token / bw, a.attention_flops_per_context_token / at)
         + G.S * (a.lm_head_flops_per_seq / mm + f.seq_overhead_s))
    if v.get("spill", True) and f.allreduce_spill_cost and a.residual_bytes_per_token:
        per_token = a.residual_bytes_per_token / (2 if v.get("one_tensor") else 1)
        threshold = d.l2_cache_mb * 1e6 / per_token
        price = d.interconnect_gbs * 1e9 if v.get("spill_link") else bw
        t = t + f.allreduce_spill_cost * a.allreduce_bytes_per_token / price * np.maximum(0.0, G.T - threshold)
    floor = a.layers * f.prefill_floor_layer_s * (get_gpu("h100-sxm").clock_mhz * 1e6 / clock
                                                  if v.get("floor_cycles") else 1.0)
    return np.where(G.prefill & (t < floor), floor, t)


def fit(steps: pd.DataFrame, v: dict) -> EfficiencyFactors:
    """Factors for variant ``v``, fitted as sim.profiles.fit.fit_factors fits the shipped form."""
    from scipy.optimize import least_squares

    steps = steps.reset_index(drop=True)
    groups = groups_of(steps)
    free = [n for n in FITTED if v.get("spill", True) or n != "allreduce_spill_cost"]
    start = START if v.get("spill", True) else EfficiencyFactors(**{**asdict(START), "allreduce_spill_cost": 0.0})
    if v.get("spill_link"):  # the same start, in link rather than HBM units
        start = EfficiencyFactors(**{**asdict(start), "allreduce_spill_cost": 1.0})
    y = steps["seconds"].to_numpy(float)
    x0 = np.log([getattr(start, n) for n in free])
    eff = {"hbm_efficiency", "matmul_efficiency", "attention_efficiency", "interconnect_efficiency"}
    lo = np.array([np.log(0.02) if n in eff else np.log(1e-12) for n in free])
    hi = np.array([np.log(1.5) if n in eff else np.log(1e9) for n in free])
    weight = 0.02 * np.sqrt(len(y))

    def factors(z):
        return start.with_values(**{n: float(np.exp(x)) for n, x in zip(free, z)})

    def residuals(z):
        f, out = factors(z), np.empty(len(y))
        for G in groups:
            out[G.idx] = step_times(G, f, v)
        return np.concatenate([out / y - 1.0, weight * (z - x0)])

    return factors(least_squares(residuals, x0, bounds=(lo, hi), loss="soft_l1", f_scale=0.05).x)


def errors(steps: pd.DataFrame, f: EfficiencyFactors, v: dict) -> pd.DataFrame:
    steps = steps.reset_index(drop=True)
    pred = np.empty(len(steps))
    for G in groups_of(steps):
        pred[G.idx] = step_times(G, f, v)
    return steps.assign(err=np.abs(pred / steps["seconds"].to_numpy(float) - 1.0))


def check_harness(steps: pd.DataFrame) -> float:
    """Largest relative difference between the harness's shipped form and sim.profiles' own predictions."""
    f = START.with_values(allreduce_spill_cost=20.0)
    steps = steps.reset_index(drop=True)
    pred = np.empty(len(steps))
    for G in groups_of(steps):
        pred[G.idx] = step_times(G, f, {})
    return float(np.max(np.abs(pred / predict(steps, f) - 1.0)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", default=str(REPO / "tests" / "data" / "splitwise_perf_model.csv"))
    args = parser.parse_args(argv)
    steps = slices(splitwise_steps(args.csv)).reset_index(drop=True)
    print(f"harness check: the shipped variant differs from sim.profiles.fit.predict by at most "
          f"{check_harness(steps):.1e} (relative)\n")
    exps = experiments(steps)
    print("### 1. mechanisms: held-out error (median over held-out slices), slices within 10%, in-sample\n")
    print("| variant | exp. 1 (H100 -> A100, BLOOM) prefill | exp. 1 decode | exp. 2 (TP4 -> TP2/8, BLOOM) "
          "prefill | exp. 2 decode | in-sample mean prefill error, exp. 1 / 2 |")
    print("|---|---|---|---|---|---|")
    for name, v in VARIANTS.items():
        cells, inside = [], []
        for _, train, test in exps:
            f = fit(steps[train], v)
            e = errors(steps[test], f, v)
            per = e.groupby(["slice", "kind"])["err"].median().unstack()
            met = int((per["prefill"] <= TARGET).sum())
            cells += [f"{per['prefill'].median():.1%} ({met}/{len(per)})", f"{per['decode'].median():.1%}"]
            ins = errors(steps[train], f, v)
            inside.append(f"{ins.loc[ins['kind'] == 'prefill', 'err'].mean():.1%}")
        print(f"| {name} | " + " | ".join(cells) + f" | {' / '.join(inside)} |")

    print("\n### 2. every measured slice fitted on itself (shipped form): the efficiencies it reaches\n")
    print("| slice | matmul_efficiency | attention_efficiency | allreduce_spill_cost | in-sample prefill median |")
    print("|---|---|---|---|---|")
    for key, g in steps[steps["hardware"] != SYNTHETIC].groupby("slice"):
        f = fit(g, {})
        e = errors(g, f, {})
        print(f"| {key} | {f.matmul_efficiency:.2f} | {f.attention_efficiency:.2f} | {f.allreduce_spill_cost:.0f} | "
              f"{e.loc[e['kind'] == 'prefill', 'err'].median():.1%} |")

    print("\n### 3. measured: b prompts of 512 tokens against one prompt of 512 x b tokens (time ratio)\n")
    pre = steps[(steps["kind"] == "prefill") & (steps["hardware"] != SYNTHETIC)]
    pre = pre.groupby(["slice", "prompt", "batch"])["seconds"].median()
    batches = (2, 4, 8, 16)
    print("| slice | " + " | ".join(f"b = {b}" for b in batches) + " |\n|---|" + "---|" * len(batches))
    for key in sorted({k[0] for k in pre.index}):
        ratios = [pre.get((key, 512, b), np.nan) / pre.get((key, 512 * b, 1), np.nan) for b in batches]
        print(f"| {key} | " + " | ".join(f"{r:.2f}" for r in ratios) + " |")

    print("\n### 4. measured: per-token cost of batches of 512-token prompts, small and large steps\n")
    print("| slice | us/token, 512-2,048 tokens | us/token, 4,096-32,768 tokens | ratio | difference, us/token |")
    print("|---|---|---|---|---|")
    batched = steps[(steps["kind"] == "prefill") & (steps["prompt"] == 512) & (steps["hardware"] != SYNTHETIC)]
    for key, g in batched.groupby("slice"):
        g = g.groupby("num_tokens")["seconds"].median()
        small, large = g[g.index <= SMALL], g[g.index >= 2 * SMALL]
        a = np.polyfit(small.index.to_numpy(float), small.to_numpy(), 1)[0] * 1e6
        b = np.polyfit(large.index.to_numpy(float), large.to_numpy(), 1)[0] * 1e6
        print(f"| {key} | {a:.0f} | {b:.0f} | {b / a:.2f} | {b - a:+.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
