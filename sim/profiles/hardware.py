"""Datasheet figures of the accelerators users serve on, with where each figure comes from.

Throughputs are *dense* tensor-core peaks: vendors headline the 2:4-sparsity
figure, which is twice the dense one; we halve it and say so. Interconnect
bandwidth is per GPU and per direction (vendors quote both directions summed),
since a ring all-reduce sends and receives at once. ``clock_mhz`` is the boost
clock: fixed GPU-side costs (small kernels, all-reduce steps) are counted in
cycles and scale with it. ``l2_cache_mb`` is the last-level on-chip cache: a
tensor-parallel all-reduce whose working set outgrows it runs from HBM instead
(``sim.profiles.derive``); 0 means unknown, and that term is then left out.

A device measured rather than read off a datasheet (``sim.profiles.cpu``) is a
``DeviceSpec`` too, with ``measured=True``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from sim.profiles.errors import DeriveError


class HardwareError(DeriveError):
    """An unknown device or an unsupported data type on it (names the allowed values)."""


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    description: str
    #: Dense tensor throughput in TFLOP/s for 16-bit (bf16/fp16) and 8-bit float
    #: (0: no fp8 tensor cores; fp8 weights then run as weight-only, at the bf16 rate).
    bf16_tflops: float
    fp8_tflops: float
    memory_gb: float
    memory_bw_gbs: float
    #: Per-GPU, per-direction bandwidth of the link tensor parallelism uses.
    interconnect_gbs: float
    interconnect: str
    clock_mhz: float
    fp32_tflops: float = 0.0
    #: Last-level on-chip cache in MB (10^6 bytes); 0: unknown (the L2-spill term is off).
    l2_cache_mb: float = 0.0
    sources: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = field(default_factory=tuple)
    measured: bool = False

    def matmul_flops(self, dtype: str) -> float:
        """Peak FLOP/s of a matmul whose weights are stored as ``dtype``."""
        if dtype == "fp32":
            if not self.fp32_tflops:
                raise HardwareError(f"{self.name}: fp32 serving is not modelled on this device; allowed dtypes: "
                                    f"{', '.join(self.dtypes())}")
            return self.fp32_tflops * 1e12
        if dtype == "fp8" and self.fp8_tflops:
            return self.fp8_tflops * 1e12
        if not self.bf16_tflops:
            raise HardwareError(f"{self.name}: no 16-bit throughput known; allowed dtypes: {', '.join(self.dtypes())}")
        return self.bf16_tflops * 1e12

    def dtypes(self) -> list[str]:
        out = []
        if self.bf16_tflops:
            out += ["bf16", "fp16", "fp8", "int8", "int4", "mxfp4"]
        if self.fp32_tflops:
            out.append("fp32")
        return out

    def summary(self) -> str:
        fp8 = f"{self.fp8_tflops:g}" if self.fp8_tflops else "-"
        l2 = f", L2 {self.l2_cache_mb:g} MB" if self.l2_cache_mb else ""
        return (f"{self.bf16_tflops:g} TF bf16 / {fp8} TF fp8 dense, {self.memory_gb:g} GB at "
                f"{self.memory_bw_gbs:g} GB/s, {self.interconnect} {self.interconnect_gbs:g} GB/s per direction, "
                f"{self.clock_mhz:g} MHz{l2}")


_A100 = "https://www.nvidia.com/en-us/data-center/a100/"
_H100 = "https://www.nvidia.com/en-us/data-center/h100/"
_H200 = "https://www.nvidia.com/en-us/data-center/h200/"
_B200 = "https://www.nvidia.com/en-us/data-center/dgx-b200/"
_L40S = "https://www.nvidia.com/en-us/data-center/l40s/"
_L4 = "https://www.nvidia.com/en-us/data-center/l4/"
_MI300X = "https://www.amd.com/en/products/accelerators/instinct/mi300/mi300x.html"
_ROCM_MI300 = "https://rocm.docs.amd.com/en/latest/conceptual/gpu-arch/mi300.html"
_TPU = "TechPowerUp GPU database (https://www.techpowerup.com/gpu-specs/)"
_A100_WP = "NVIDIA A100 Tensor Core GPU Architecture whitepaper (2020), 'A100 L2 cache'"
_H100_WP = "NVIDIA H100 Tensor Core GPU Architecture whitepaper (2022), H100 SXM5 / PCIe specifications table"
_ADA_WP = "NVIDIA Ada GPU Architecture whitepaper (2022), AD102/AD104 L2 cache"
_HALF = " (datasheet's sparsity figure halved)"

GPUS: dict[str, DeviceSpec] = {
    "a100-sxm": DeviceSpec(
        "a100-sxm", "NVIDIA A100 80GB SXM4", bf16_tflops=312, fp8_tflops=0, memory_gb=80, memory_bw_gbs=2039,
        interconnect_gbs=300, interconnect="NVLink 3", clock_mhz=1410, fp32_tflops=19.5, l2_cache_mb=40,
        sources={"bf16_tflops": _A100 + " (BF16 Tensor Core 312, dense)", "memory": _A100 + " (80GB HBM2e, 2,039 GB/s)",
                 "interconnect": _A100 + " (NVLink 600 GB/s, both directions)", "clock_mhz": _TPU + ": boost 1410 MHz",
                 "l2_cache_mb": _A100_WP + ": 40 MB"},
        notes=("no FP8 tensor cores: fp8 checkpoints run weight-only (W8A16, vLLM's FP8 Marlin) at the bf16 rate",)),
    "h100-sxm": DeviceSpec(
        "h100-sxm", "NVIDIA H100 80GB SXM5", bf16_tflops=989.4, fp8_tflops=1978.9, memory_gb=80,
        memory_bw_gbs=3350, interconnect_gbs=450, interconnect="NVLink 4", clock_mhz=1980, fp32_tflops=67,
        l2_cache_mb=50,
        sources={"bf16_tflops": _H100 + " (BF16 1,979 with sparsity)" + _HALF,
                 "fp8_tflops": _H100 + " (FP8 3,958 with sparsity)" + _HALF,
                 "memory": _H100 + " (80GB HBM3, 3.35 TB/s)", "interconnect": _H100 + " (NVLink 900 GB/s, both directions)",
                 "clock_mhz": _TPU + ": boost 1980 MHz", "l2_cache_mb": _H100_WP + ": 50 MB"}),
    "h100-pcie": DeviceSpec(
        "h100-pcie", "NVIDIA H100 80GB PCIe", bf16_tflops=756.5, fp8_tflops=1513, memory_gb=80, memory_bw_gbs=2000,
        interconnect_gbs=300, interconnect="NVLink bridge (pairs)", clock_mhz=1755, fp32_tflops=51, l2_cache_mb=50,
        sources={"bf16_tflops": _H100 + " (BF16 1,513 with sparsity)" + _HALF,
                 "fp8_tflops": _H100 + " (FP8 3,026 with sparsity)" + _HALF,
                 "memory": _H100 + " (80GB HBM2e, 2 TB/s)",
                 "interconnect": _H100 + " (NVLink bridge 600 GB/s both directions; PCIe Gen5 128 GB/s without it)",
                 "clock_mhz": _TPU + ": boost 1755 MHz", "l2_cache_mb": _H100_WP + ": 50 MB"},
        notes=("tensor parallel > 2 crosses PCIe (64 GB/s per direction); the NVLink figure applies to bridged pairs",)),
    "h200": DeviceSpec(
        "h200", "NVIDIA H200 141GB SXM", bf16_tflops=989.4, fp8_tflops=1978.9, memory_gb=141, memory_bw_gbs=4800,
        interconnect_gbs=450, interconnect="NVLink 4", clock_mhz=1980, fp32_tflops=67, l2_cache_mb=50,
        sources={"bf16_tflops": _H200 + " (BF16 1,979 with sparsity)" + _HALF,
                 "fp8_tflops": _H200 + " (FP8 3,958 with sparsity)" + _HALF,
                 "memory": _H200 + " (141GB HBM3e, 4.8 TB/s)", "interconnect": _H200 + " (NVLink 900 GB/s)",
                 "clock_mhz": "same GH100 die as H100 SXM; " + _TPU + ": boost 1980 MHz",
                 "l2_cache_mb": "same GH100 configuration as H100 SXM; " + _TPU + ": 50 MB"}),
    "b200": DeviceSpec(
        "b200", "NVIDIA B200 (HGX/DGX B200, 1000 W)", bf16_tflops=2250, fp8_tflops=4500, memory_gb=180,
        memory_bw_gbs=8000, interconnect_gbs=900, interconnect="NVLink 5", clock_mhz=1980, fp32_tflops=80,
        l2_cache_mb=126,
        sources={"bf16_tflops": _B200 + " (72 PFLOPS FP8 / 36 PFLOPS FP16 with sparsity for 8 GPUs)" + _HALF,
                 "fp8_tflops": _B200 + " (72 PFLOPS FP8 with sparsity for 8 GPUs)" + _HALF,
                 "memory": _B200 + " (1,440 GB HBM3e and 64 TB/s for 8 GPUs)",
                 "interconnect": _B200 + " (NVLink 5: 1.8 TB/s per GPU, both directions)",
                 "clock_mhz": "not published; assumed equal to H100 SXM's 1980 MHz",
                 "l2_cache_mb": "not in NVIDIA's datasheet; 126 MB as third-party architecture summaries "
                                "report it (others say 96 MB)"},
        notes=("boost clock not in NVIDIA's datasheet: the fixed per-layer GPU costs assume H100's clock",
               "L2 size not in NVIDIA's datasheet (third-party figure): it sets where the all-reduce "
               "spill term starts")),
    "l40s": DeviceSpec(
        "l40s", "NVIDIA L40S 48GB (PCIe)", bf16_tflops=362.05, fp8_tflops=733, memory_gb=48, memory_bw_gbs=864,
        interconnect_gbs=32, interconnect="PCIe Gen4 x16", clock_mhz=2520, fp32_tflops=91.6, l2_cache_mb=96,
        sources={"bf16_tflops": _L40S + " (BF16 362.05, 733 with sparsity)",
                 "fp8_tflops": _L40S + " (FP8 1,466 with sparsity)" + _HALF,
                 "memory": _L40S + " (48GB GDDR6, 864 GB/s)",
                 "interconnect": _L40S + " (PCIe Gen4 x16: 64 GB/s both directions; no NVLink)",
                 "clock_mhz": _TPU + ": boost 2520 MHz", "l2_cache_mb": _ADA_WP + " (AD102: 96 MB); " + _TPU}),
    "l4": DeviceSpec(
        "l4", "NVIDIA L4 24GB (PCIe)", bf16_tflops=121, fp8_tflops=242.5, memory_gb=24, memory_bw_gbs=300,
        interconnect_gbs=32, interconnect="PCIe Gen4 x16", clock_mhz=2040, fp32_tflops=30.3, l2_cache_mb=48,
        sources={"bf16_tflops": _L4 + " (BF16 242 with sparsity)" + _HALF,
                 "fp8_tflops": _L4 + " (FP8 485 with sparsity)" + _HALF,
                 "memory": _L4 + " (24GB GDDR6, 300 GB/s)", "interconnect": _L4 + " (PCIe Gen4 x16 64 GB/s)",
                 "clock_mhz": _TPU + ": boost 2040 MHz", "l2_cache_mb": _ADA_WP + " (AD104: 48 MB); " + _TPU}),
    "mi300x": DeviceSpec(
        "mi300x", "AMD Instinct MI300X 192GB (OAM)", bf16_tflops=1307.4, fp8_tflops=2614.9, memory_gb=192,
        memory_bw_gbs=5300, interconnect_gbs=448, interconnect="Infinity Fabric (7 links)", clock_mhz=2100,
        fp32_tflops=163.4, l2_cache_mb=256,
        sources={"bf16_tflops": _MI300X + " (peak BF16 1,307.4 TFLOPS dense)",
                 "fp8_tflops": _MI300X + " (peak FP8 2,614.9 TFLOPS dense)",
                 "memory": _MI300X + " (192 GB HBM3, 5.3 TB/s)",
                 "interconnect": _MI300X + " (7 Infinity Fabric links of 128 GB/s both directions)",
                 "clock_mhz": _ROCM_MI300 + " (peak engine clock 2100 MHz)",
                 "l2_cache_mb": _MI300X + " (256 MB AMD Infinity Cache, the memory-side last-level cache; "
                                "each XCD's own L2 is 4 MB)"},
        notes=("the efficiency factors were fitted on NVIDIA GPUs; ROCm kernels reach other fractions of peak",)),
}

#: Other spellings accepted (lower case), including Splitwise's hardware names.
GPU_ALIASES = {
    "a100": "a100-sxm", "a100-80gb": "a100-sxm", "a100-sxm4": "a100-sxm",
    "h100": "h100-sxm", "h100-80gb": "h100-sxm", "h100-sxm5": "h100-sxm",
    "h200-sxm": "h200", "b200-sxm": "b200", "mi300": "mi300x",
}


def gpu_names() -> list[str]:
    return list(GPUS)


def get_gpu(name: str) -> DeviceSpec:
    key = name.strip().lower()
    key = GPU_ALIASES.get(key, key)
    if key not in GPUS:
        raise HardwareError(f"unknown GPU {name!r}; allowed: {', '.join(GPUS)} "
                            f"(also: {', '.join(sorted(GPU_ALIASES))})")
    return GPUS[key]


def device_from_dict(doc: dict, origin: str) -> DeviceSpec:
    """A device from a JSON object (``python -m sim.profiles measure-cpu`` writes one)."""
    from dataclasses import fields as _fields

    allowed = {f.name for f in _fields(DeviceSpec)}
    known = {k: v for k, v in doc.items() if k in allowed}
    missing = {"name", "memory_gb", "memory_bw_gbs"} - set(known)
    if missing:
        raise HardwareError(f"{origin}: device JSON lacks {sorted(missing)}")
    known.setdefault("description", known["name"])
    for key in ("bf16_tflops", "fp8_tflops", "interconnect_gbs", "clock_mhz", "l2_cache_mb"):
        known.setdefault(key, 0.0)
    known.setdefault("interconnect", "none")
    known["notes"] = tuple(known.get("notes", ()))
    try:
        spec = DeviceSpec(**known)
    except TypeError as exc:
        raise HardwareError(f"{origin}: bad device JSON ({exc})") from None
    if not (spec.bf16_tflops or spec.fp32_tflops) or spec.memory_bw_gbs <= 0 or spec.clock_mhz <= 0:
        raise HardwareError(f"{origin}: a device needs a throughput (bf16_tflops or fp32_tflops), "
                            "memory_bw_gbs > 0 and clock_mhz > 0")
    return spec


def load_device(name_or_path: str) -> DeviceSpec:
    """A shipped GPU by name, or a device JSON file by path."""
    import json
    from pathlib import Path

    if name_or_path.endswith(".json") or "/" in name_or_path:
        path = Path(name_or_path)
        if not path.is_file():
            raise HardwareError(f"device file {path} does not exist; shipped GPUs: {', '.join(GPUS)}")
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise HardwareError(f"{path}: not valid JSON ({exc})") from None
        return device_from_dict(doc, str(path))
    return get_gpu(name_or_path)
