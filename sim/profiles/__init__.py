"""Latency profiles: the shipped JSON files, and profiles derived from a model's architecture and a GPU's datasheet.

``derive_profile("llama-3.1-8b", "l40s", tp=1)`` builds the same versioned
``sim.latency.LatencyProfile`` a fit produces, from the step's arithmetic
(``arithmetic``), the device's datasheet (``hardware``) and a few efficiency
factors fitted on measurements (``factors``). ``python -m sim.profiles`` is the
command line. docs/derived-profiles.md says how accurate this is.
"""
from sim.profiles.architecture import ModelArch, ModelError, load_model
from sim.profiles.arithmetic import StepArithmetic, step_arithmetic
from sim.profiles.derive import derive_profile, latency_model, profile_from_spec
from sim.profiles.errors import DeriveError
from sim.profiles.factors import EfficiencyFactors, FactorSet, load_factor_set
from sim.profiles.hardware import DeviceSpec, HardwareError, get_gpu

__all__ = [
    "DeriveError", "DeviceSpec", "EfficiencyFactors", "FactorSet", "HardwareError", "ModelArch", "ModelError",
    "StepArithmetic", "derive_profile", "get_gpu", "latency_model", "load_factor_set", "load_model",
    "profile_from_spec", "step_arithmetic",
]
