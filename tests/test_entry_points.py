"""Every ``python -m`` entry point works after the README's plain install.

The install is ``pip install -e .`` (``install_requires`` only). Each entry point's
``--help`` runs here with every package that only an extra brings made unimportable,
so a module that needs an extra at import time fails this test.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENTRY_POINTS = ["sim", "scenarios", "workload", "results", "predictors", "live", "live.gateway",
                "live.emulator", "calibrate", "calibrate.evidence", "validation"]
#: Import names of what the extras add beyond install_requires ([ray], [test]).
EXTRAS_ONLY = ["ray", "pytest", "_pytest", "hypothesis", "openai", "pytest_timeout", "xdist", "execnet"]

_RUNNER = """
import importlib.abc, runpy, sys
BLOCKED = set(sys.argv[2].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: only an extra has it)")
        return None
sys.meta_path.insert(0, Block())
module = sys.argv[1]
sys.argv = [module, "--help"]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def _requirements() -> list[str]:
    from setuptools.config.setupcfg import read_configuration

    return read_configuration(str(REPO / "setup.cfg"))["options"]["install_requires"]


def test_the_http_stack_is_in_the_plain_install():
    names = {r.split(";")[0].split(">")[0].split("=")[0].strip().lower() for r in _requirements()}
    assert {"aiohttp", "httptools", "orjson", "prometheus-client", "uvloop"} <= names


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_help_works_without_any_extra(module, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", _RUNNER, module, ",".join(EXTRAS_ONLY)],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout
    assert "ModuleNotFoundError" not in proc.stderr
