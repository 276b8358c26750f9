"""The rules of docs/architecture.md ("Rules the tests enforce"), checked on the source itself.

- **Import rules**: which package may import which (the table in
  docs/architecture.md); of ``sim``, ``live`` imports only the engine model;
  nothing imports a ``__main__``. Relative imports and ``importlib.import_module``
  with a literal name count as imports.
- **Determinism**: the simulation core (``routing``, ``workload``, ``sim`` apart from
  its orchestration) never reads the wall clock or an unseeded or global random
  generator, so a scenario and a seed fix a run bit for bit. Command-line entry
  points (``cli.py``, ``__main__.py``) may time their work.

Each rule is a function from source text to violations; the self-tests at the end
feed each one a bad snippet and check that it fires (and stays quiet on a good one).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("workload", "routing", "predictors", "scenarios", "sim", "live", "calibrate", "validation",
            "results", "labcore")
ALLOWED = {
    "workload": set(),
    "routing": {"predictors", "labcore"},
    "predictors": set(),
    "scenarios": {"routing", "workload"},
    "results": set(),
    "sim": {"routing", "workload", "scenarios", "results", "labcore"},
    "live": {"routing", "workload", "scenarios", "results", "sim"},
    "calibrate": {"live", "sim", "workload", "results", "predictors", "routing", "scenarios"},
    "validation": {"calibrate", "live", "sim", "workload", "results", "routing", "scenarios"},
    "labcore": set(),
}
#: Of ``sim``, ``live`` may import only the engine model (the emulator steps it on the
#: wall clock); the cluster, fleets and sweeps are the simulator's, and ``validation``
#: joins the two modes.
SIM_ENGINE_MODEL = {"sim.engine", "sim.scheduler", "sim.fast_path", "sim.plan", "sim.request",
                    "sim.itl", "sim.latency", "sim.kv_cache", "sim.decode_group", "sim.timeline",
                    "sim.frontend"}
#: Programs that also import one module above their package: ``python -m scenarios check``
#: resolves latency profiles with the simulator's loader, so it accepts exactly what sim
#: and live accept (nothing imports a ``__main__``, so this adds no import cycle).
#: ``python -m labcore`` imports the two packages whose compiled state it reports.
PROGRAM_EXTRAS = {"scenarios.__main__": {"sim.latency"}, "labcore.__main__": {"routing", "sim"}}
#: ``sim`` modules that orchestrate runs (ids, timing, processes): outside the deterministic core.
SIM_ORCHESTRATION = {"sweep.py", "cli.py", "__main__.py", "workers.py"}
#: Entry points may time their work wherever they are.
ENTRY_POINTS = {"cli.py", "__main__.py"}
#: Tools that measure hardware on the wall clock, inside ``sim`` but never called by a
#: simulation (measuring is calibration's kind of job: see docs/architecture.md).
MEASUREMENT_TOOLS = {"sim/profiles/cpu.py"}

CLOCK = {"time.time", "time.time_ns", "time.perf_counter", "time.perf_counter_ns", "time.monotonic",
         "time.monotonic_ns", "time.process_time", "datetime.datetime.now", "datetime.datetime.utcnow",
         "datetime.datetime.today", "datetime.date.today"}
#: numpy.random names that build a generator: fine when seeded (given an argument that is not None).
NUMPY_SEEDABLE = {"default_rng", "RandomState", "SeedSequence", "Generator", "PCG64", "PCG64DXSM",
                  "Philox", "SFC64", "MT19937"}
ENTROPY = {"os.urandom", "uuid.uuid1", "uuid.uuid4", "random.SystemRandom"}


def deterministic_files() -> list[Path]:
    files = [*sorted((ROOT / "routing").rglob("*.py")), *sorted((ROOT / "workload").rglob("*.py")),
             *(p for p in sorted((ROOT / "sim").rglob("*.py"))
               if p.parent != ROOT / "sim" or p.name not in SIM_ORCHESTRATION)]
    return [p for p in files if p.name not in ENTRY_POINTS
            and p.relative_to(ROOT).as_posix() not in MEASUREMENT_TOOLS]


# --- reading the source ----------------------------------------------------------------------
def module_name(path: Path) -> str:
    """``live/emulator/server.py`` -> ``live.emulator.server`` (``live/__init__.py`` -> ``live.__init__``)."""
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def imports(source: str, module: str) -> list[tuple[int, str]]:
    """(line, imported module) for every import of ``source``, the module named ``module``."""
    tree = ast.parse(source)
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: level 1 is the package this module is in
                base = module.split(".")
                base = base[: len(base) - node.level]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.append((node.lineno, name))
            out += [(node.lineno, f"{name}.{a.name}") for a in node.names
                    if f"{name}.{a.name}".split(".")[0] in PACKAGES and a.name != "*"
                    and _is_module(f"{name}.{a.name}")]
        elif isinstance(node, ast.Call) and _dotted(node.func) in ("importlib.import_module", "__import__",
                                                                    "import_module"):
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                out.append((node.lineno, node.args[0].value))
    return out


def _is_module(dotted: str) -> bool:
    """Whether ``dotted`` names a module or package of this repository (``from sim import cluster``)."""
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> what it stands for: ``np`` -> ``numpy``, ``perf_counter`` -> ``time.perf_counter``."""
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                out[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for a in node.names:
                out[a.asname or a.name] = f"{node.module}.{a.name}"
    return out


def qualified_calls(source: str) -> list[tuple[int, str, ast.Call]]:
    """Every call with its callee's fully qualified name, through import aliases."""
    tree = ast.parse(source)
    aliases = _aliases(tree)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            if not name:
                continue
            head, _, rest = name.partition(".")
            full = aliases.get(head, head) + (f".{rest}" if rest else "")
            out.append((node.lineno, full, node))
    return out


# --- the rules -------------------------------------------------------------------------------
def import_violations(source: str, module: str) -> list[str]:
    """What ``module`` (e.g. ``live.run``) imports against the import rules."""
    package = module.split(".")[0]
    bad = []
    for line, name in imports(source, module):
        top = name.split(".")[0]
        if name.split(".")[-1] == "__main__":
            bad.append(f"line {line}: imports {name} (nothing imports a __main__)")
        elif name in PROGRAM_EXTRAS.get(module, ()):
            continue
        elif top in PACKAGES and top != package and top not in ALLOWED[package]:
            bad.append(f"line {line}: imports {name} ({package} may import "
                       f"{', '.join(sorted(ALLOWED[package])) or 'nothing of the project'})")
        elif package == "live" and top == "sim" and name != "sim" and ".".join(name.split(".")[:2]) \
                not in SIM_ENGINE_MODEL:
            bad.append(f"line {line}: imports {name} (live uses only sim's engine model)")
    return bad


def determinism_violations(source: str) -> list[str]:
    """Wall-clock reads and unseeded or global random generators in ``source``."""
    bad = []
    for line, name, call in qualified_calls(source):
        parts = name.split(".")
        unseeded = not call.args and not call.keywords or (
            call.args and isinstance(call.args[0], ast.Constant) and call.args[0].value is None)
        if name in CLOCK:
            bad.append(f"line {line}: {name}() reads the wall clock")
        elif name in ENTROPY:
            bad.append(f"line {line}: {name}() draws from the OS, not from the run's seed")
        elif parts[:2] == ["numpy", "random"] and len(parts) == 3:
            if parts[2] not in NUMPY_SEEDABLE:
                bad.append(f"line {line}: {name}() uses numpy's global generator")
            elif unseeded:
                bad.append(f"line {line}: {name}() without a seed draws from the OS")
        elif parts[0] == "random" and len(parts) == 2:
            if parts[1] != "Random":
                bad.append(f"line {line}: {name}() uses Python's global generator")
            elif unseeded:
                bad.append(f"line {line}: {name}() without a seed draws from the OS")
    return bad


# --- on the repository -----------------------------------------------------------------------
@pytest.mark.parametrize("package", PACKAGES)
def test_packages_import_only_what_the_design_allows(package):
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        bad += [f"{path.relative_to(ROOT)} {v}" for v in import_violations(path.read_text(), module_name(path))]
    assert bad == []


@pytest.mark.parametrize("path", deterministic_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_simulation_core_reads_no_clock_and_no_unseeded_rng(path):
    assert determinism_violations(path.read_text()) == []


def test_the_documented_import_table_is_the_enforced_one():
    """docs/architecture.md's table of packages says what ``ALLOWED`` enforces, no more, no less."""
    import re

    documented = {}
    for line in (ROOT / "docs" / "architecture.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and re.fullmatch(r"`(\w+)`", cells[0]) and cells[0].strip("`") in PACKAGES:
            named = set(re.findall(r"`(\w+)`", cells[2]))
            documented[cells[0].strip("`")] = named & set(PACKAGES)
    assert documented == ALLOWED


def test_the_core_covers_every_engine_module():
    covered = {p.name for p in deterministic_files() if p.parent == ROOT / "sim"}
    assert {"engine.py", "kv_cache.py", "decode_group.py", "request.py", "cluster.py"} <= covered


# --- each rule fires on a bad snippet ----------------------------------------------------------
@pytest.mark.parametrize("snippet, fragment", [
    ("import time\nt = time.perf_counter()\n", "time.perf_counter() reads the wall clock"),
    ("from time import perf_counter\nt = perf_counter()\n", "time.perf_counter() reads the wall clock"),
    ("from time import perf_counter as pc\nt = pc()\n", "time.perf_counter()"),
    ("import time as t\nx = t.monotonic()\n", "time.monotonic()"),
    ("from datetime import datetime\nx = datetime.now()\n", "datetime.datetime.now()"),
    ("import datetime\nx = datetime.date.today()\n", "datetime.date.today()"),
    ("import numpy as np\nrng = np.random.default_rng()\n", "numpy.random.default_rng() without a seed"),
    ("import numpy as np\nrng = np.random.default_rng(None)\n", "without a seed"),
    ("from numpy.random import default_rng\nrng = default_rng()\n", "without a seed"),
    ("from numpy import random as npr\nx = npr.gamma(1.0)\n", "numpy.random.gamma() uses numpy's global"),
    ("import numpy as np\nx = np.random.gamma(1.0)\n", "numpy's global generator"),
    ("import random\nr = random.Random()\n", "random.Random() without a seed"),
    ("import random\nx = random.random()\n", "Python's global generator"),
    ("from random import shuffle\nshuffle(xs)\n", "random.shuffle() uses Python's global"),
    ("import uuid\nx = uuid.uuid4()\n", "draws from the OS"),
    ("import os\nx = os.urandom(8)\n", "draws from the OS"),
])
def test_the_determinism_rule_fires(snippet, fragment):
    found = determinism_violations(snippet)
    assert len(found) == 1 and fragment in found[0], found


def test_the_determinism_rule_passes_seeded_generators():
    good = ("import random\nimport numpy as np\nfrom numpy.random import default_rng\n"
            "a = random.Random(seed)\nb = np.random.default_rng([seed, 7])\nc = default_rng(seed=3)\n"
            "d = np.random.RandomState(seed)\ne = rng.random()\nf = self.rng.choice(xs)\n")
    assert determinism_violations(good) == []


@pytest.mark.parametrize("module, snippet, fragment", [
    ("live.run", "from sim.cluster import simulate\n", "live uses only sim's engine model"),
    ("live.run", "from sim import cluster\n", "imports sim.cluster"),
    ("live.emulator.driver", "from ...sim import sweep\n", "imports sim.sweep"),
    ("live.cli", "import importlib\nm = importlib.import_module('validation.cli')\n",
     "imports validation.cli (live may import"),
    ("live.cli", "from validation import pipeline\n", "imports validation"),
    ("workload.build", "from scenarios import load_scenario\n", "workload may import nothing"),
    ("routing.router", "import sim.engine\n", "imports sim.engine"),
    ("results.report", "def f():\n    from live.transport import client\n", "imports live.transport"),
    ("calibrate.cli", "from sim.__main__ import x\n", "nothing imports a __main__"),
    ("scenarios.grid", "from . import validation\n", None),  # scenarios.validation: same package
    ("scenarios.__main__", "from sim.latency import load_profile\n", None),  # a program's extra
    ("scenarios.cli", "from sim.latency import load_profile\n", "imports sim.latency"),
])
def test_the_import_rule_fires(module, snippet, fragment):
    found = import_violations(snippet, module)
    if fragment is None:
        assert found == []
    else:
        assert found and fragment in found[0], found


def test_the_import_rule_passes_what_the_table_allows():
    assert import_violations("from sim.engine import Engine\nfrom sim import latency\n", "live.emulator.driver") == []
    assert import_violations("from live.run import run_scenario\nfrom calibrate.serve import VllmServer\n"
                             "from sim.cluster import simulate\n", "validation.pipeline") == []
    assert import_violations("from workload.tables import key\n", "scenarios.schema") == []
