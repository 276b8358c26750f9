"""The house rules that keep the design simple, checked on the source itself.

See docs/architecture.md: which package may import which, nothing imports
``live`` except ``calibrate`` or any ``__main__``, and the simulation core never
reads the wall clock or a global random generator (time is passed in, randomness
comes from seeded generators), so a seed and a scenario fix a run bit for bit.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("workload", "routing", "predictors", "scenarios", "sim", "live", "calibrate", "validation",
            "results")
ALLOWED = {
    "workload": set(),
    "routing": {"predictors"},
    "predictors": set(),
    "scenarios": {"routing", "workload"},
    "results": set(),
    "sim": {"routing", "workload", "scenarios", "results"},
    "live": {"routing", "workload", "scenarios", "results", "sim"},
    "calibrate": {"live", "sim", "workload", "results", "predictors", "routing", "scenarios"},
    "validation": {"calibrate", "live", "sim", "workload", "results", "routing", "scenarios"},
}
# Of ``sim``, ``live`` may import only the engine model (the emulator steps it on the wall
# clock); the cluster, fleets and sweeps are the simulator's, and validation joins the two.
SIM_ENGINE_MODEL = {"sim.engine", "sim.request", "sim.latency", "sim.kv_cache", "sim.decode_group",
                    "sim.timeline", "sim.frontend"}
# Programs that also import one module above their package: `python -m scenarios check`
# resolves latency profiles with the simulator's loader, so it accepts exactly what sim
# and live accept (nothing imports a __main__, so this adds no import cycle).
PROGRAM_EXTRAS = {"scenarios/__main__.py": {"sim.latency"}}
# Modules that must be deterministic given their inputs (orchestration such as the
# sweep's run ids and timing, or a fitting script's provenance date, is exempt).
DETERMINISTIC = [
    *sorted((ROOT / "routing").rglob("*.py")),
    *sorted((ROOT / "workload").rglob("*.py")),
    *(ROOT / "sim" / f"{name}.py" for name in
      ("engine", "kv_cache", "request", "latency", "timeline", "cluster", "fleet", "frontend")),
]
CLOCK_CALLS = {("time", "time"), ("time", "perf_counter"), ("time", "monotonic"),
               ("time", "time_ns"), ("datetime", "now"), ("datetime", "utcnow"), ("date", "today")}
GLOBAL_RNG = {"random", "randint", "choice", "shuffle", "uniform", "gauss", "seed", "sample",
              "normal", "exponential", "gamma", "rand", "randn", "permutation", "lognormal"}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append(node.module)
    return out


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_import_only_what_the_design_allows(package):
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for module in _imports(path):
            top = module.split(".")[0]
            if module.endswith("__main__"):
                bad.append(f"{path.relative_to(ROOT)} imports {module} (nothing imports a __main__)")
            elif module in PROGRAM_EXTRAS.get(path.relative_to(ROOT).as_posix(), ()):
                continue
            elif top in PACKAGES and top != package and top not in ALLOWED[package]:
                bad.append(f"{path.relative_to(ROOT)} imports {module}")
            elif package == "live" and top == "sim" and module not in SIM_ENGINE_MODEL:
                bad.append(f"{path.relative_to(ROOT)} imports {module} (live uses only sim's engine model)")
    assert bad == []


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


@pytest.mark.parametrize("path", DETERMINISTIC, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_simulation_core_reads_no_clock_and_no_global_rng(path):
    tree = ast.parse(path.read_text(), str(path))
    bad = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        parts = name.split(".")
        if len(parts) >= 2 and (parts[-2], parts[-1]) in CLOCK_CALLS:
            bad.append(f"line {node.lineno}: {name}() reads the wall clock")
        if name.startswith(("np.random.", "numpy.random.")) and parts[-1] in GLOBAL_RNG:
            bad.append(f"line {node.lineno}: {name}() uses numpy's global generator")
        if len(parts) == 2 and parts[0] == "random" and parts[1] in GLOBAL_RNG:
            bad.append(f"line {node.lineno}: {name}() uses Python's global generator")
    assert bad == []


def test_the_checks_would_catch_a_violation(tmp_path):
    # The two checks above must be able to fail: run them on a bad file.
    bad = tmp_path / "bad.py"
    bad.write_text("import time, random\nimport numpy as np\nfrom live import gateway\n"
                   "t = time.perf_counter()\nx = random.random()\ny = np.random.gamma(1.0)\n")
    tree = ast.parse(bad.read_text())
    calls = [_dotted(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)]
    assert {"time.perf_counter", "random.random", "np.random.gamma"} <= set(calls)
    assert "live" in _imports(bad)
