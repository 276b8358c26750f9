"""The compiled core's loader (``labcore``) and build (``setup.py``).

The finder's rules are checked on a small copy of the tree with stand-in
extension files (no compiler needed): an extension is loaded only when its
recorded hash is the source's, a stale one is refused with one line of stderr,
and ``VLLM_LAB_PURE_PYTHON=1`` wins. With Cython and a C compiler, a real build of
one module in a temporary tree is loaded, refused once its source is edited and
rebuilt. Where the repository's own build is present, compiled and pure-Python
simulations must write identical records.
"""
from __future__ import annotations

import hashlib
import importlib.machinery
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import labcore
from build_helpers import why_cannot_build

REPO = Path(__file__).resolve().parents[2]
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]
CLEAN_ENV = {k: v for k, v in os.environ.items()
             if k not in (labcore.PURE_ENV, labcore.NOTICE_ENV, labcore.BUILD_ENV, "PYTHONPATH")}


def run_py(code: str, tree: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tree, text=True,
                          capture_output=True, env={**CLEAN_ENV, "PYTHONPATH": str(tree), **env},
                          timeout=300)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """labcore and the two modules of sim the finder tests import (no project imports)."""
    shutil.copytree(REPO / "labcore", tmp_path / "labcore",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "sim").mkdir()
    for name in ("__init__.py", "timeline.py", "itl.py"):
        shutil.copy(REPO / "sim" / name, tmp_path / "sim" / name)
    return tmp_path


def stand_in_extension(tree: Path, leaf: str, recorded_hash: str) -> Path:
    """Not a loadable library: importing it fails, which shows the finder chose it."""
    d = tree / "sim" / "_compiled"
    d.mkdir(exist_ok=True)
    so = d / f"{leaf}{SUFFIX}"
    so.write_bytes(b"not an ELF file")
    (d / f"{leaf}.sha256").write_text(recorded_hash + "\n")
    return so


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


IMPORT_TIMELINE = """
    import sim.timeline as m
    print(m.__spec__.origin)
"""


def test_a_current_extension_is_the_one_imported(tree):
    stand_in_extension(tree, "timeline", sha(tree / "sim" / "timeline.py"))
    res = run_py(IMPORT_TIMELINE, tree)
    assert res.returncode != 0
    assert "timeline" + SUFFIX in res.stderr  # the loader opened the stand-in


def test_a_stale_extension_is_refused_with_one_line(tree):
    stand_in_extension(tree, "timeline", "0" * 64)
    stand_in_extension(tree, "itl", "1" * 64)
    res = run_py("""
        import subprocess, sys
        import sim.timeline as t, sim.itl as i
        print(t.__spec__.origin)
        print(i.__spec__.origin)
        # a worker started from this process stays quiet
        subprocess.run([sys.executable, "-c", "import sim.itl"], check=True)
    """, tree)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [str(tree / "sim" / "timeline.py"), str(tree / "sim" / "itl.py")]
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert "out of date" in lines[0] and "sim.timeline" in lines[0] and "pip install -e ." in lines[0]


def test_an_augmenting_pxd_written_after_the_build_makes_it_stale(tree):
    stand_in_extension(tree, "timeline", sha(tree / "sim" / "timeline.py"))
    (tree / "sim" / "timeline.pxd").write_text("cdef class Timeline:\n    pass\n")
    res = run_py(IMPORT_TIMELINE, tree)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(tree / "sim" / "timeline.py")
    assert "out of date" in res.stderr


def test_a_typed_twin_is_what_the_build_compiles_and_is_part_of_the_hash(tree):
    py = tree / "sim" / "timeline.py"
    assert labcore.build_source(py) == py
    stand_in_extension(tree, "timeline", sha(py))
    (tree / "sim" / "timeline.pyx").write_text("def f():\n    return 1\n")
    assert labcore.build_source(py) == tree / "sim" / "timeline.pyx"
    assert labcore.source_hash(py) != sha(py)  # the build's hash covers the twin ...
    res = run_py(IMPORT_TIMELINE, tree)  # ... so an extension built before it is stale
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(py)
    assert "out of date" in res.stderr


def test_forcing_pure_python_skips_a_current_extension_silently(tree):
    stand_in_extension(tree, "timeline", sha(tree / "sim" / "timeline.py"))
    res = run_py(IMPORT_TIMELINE, tree, **{labcore.PURE_ENV: "1"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(tree / "sim" / "timeline.py")
    assert res.stderr == ""


def test_an_expected_module_without_an_extension_is_reported_once(tree):
    res = run_py("""
        import labcore
        labcore.COMPILED = ("sim.timeline", "sim.itl")
        import sim.timeline, sim.itl
        print(sim.timeline.__spec__.origin)
    """, tree)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(tree / "sim" / "timeline.py")
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and "not built" in lines[0] and "sim.timeline" in lines[0], res.stderr
    assert "gcc" in lines[0]


def test_nothing_expected_and_nothing_built_says_nothing(tree):
    res = run_py(IMPORT_TIMELINE, tree)
    assert res.returncode == 0 and res.stderr == ""


def test_an_install_that_predates_labcore_still_imports_the_python_modules(tree):
    """An editable install made before labcore existed maps only the packages it knew."""
    shutil.rmtree(tree / "labcore")
    # A current install maps labcore from elsewhere (the repository an editable install
    # points at): block the import, as an install that predates labcore does.
    res = run_py("""
        import sys
        sys.modules["labcore"] = None  # 'import labcore' now raises ImportError
        import sim.timeline
        print(sim.timeline.__spec__.origin, sys.modules["labcore"] is None)
    """, tree)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [str(tree / "sim" / "timeline.py"), "True"]
    assert res.stderr == ""


def test_the_build_list_comes_from_the_environment():
    assert labcore.build_list({}) == labcore.COMPILED
    assert labcore.build_list({"VLLM_LAB_COMPILE": "all"}) == labcore.CANDIDATES
    assert labcore.build_list({"VLLM_LAB_COMPILE": "sim.kv_cache, sim.engine"}) == (
        "sim.kv_cache", "sim.engine")
    with pytest.raises(ValueError, match="VLLM_LAB_COMPILE.*sim.nope.*allowed: 'all'"):
        labcore.build_list({"VLLM_LAB_COMPILE": "sim.kv_cache,sim.nope"})


@pytest.mark.slow
@pytest.mark.skipif(why_cannot_build() is not None, reason=str(why_cannot_build()))
def test_a_real_build_is_loaded_refused_when_edited_and_rebuilt(tree):
    for name in ("setup.py", "setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, tree / name)

    def build():
        res = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=tree,
                             text=True, capture_output=True, timeout=600,
                             env={**CLEAN_ENV, "VLLM_LAB_COMPILE": "sim.timeline"})
        assert res.returncode == 0, res.stderr[-3000:]

    build()
    so = tree / "sim" / "_compiled" / f"timeline{SUFFIX}"
    assert so.is_file()
    assert (tree / "sim" / "_compiled" / "timeline.sha256").read_text().strip() == sha(
        tree / "sim" / "timeline.py")
    assert not list((tree / "sim").glob(f"timeline*{SUFFIX}"))  # nothing beside the .py
    check = """
        import sim.timeline as m
        from sim.timeline import Timeline
        print(m.__spec__.origin, m.__file__, type(m.Timeline.__init__).__name__)
    """
    origin, file, kind = run_py(check, tree).stdout.split()
    assert (origin, file) == (str(so), str(tree / "sim" / "timeline.py"))
    assert kind == "cython_function_or_method"

    with open(tree / "sim" / "timeline.py", "a") as f:
        f.write("\n# edited after the build\n")
    res = run_py(check, tree)
    assert res.stdout.split()[0] == str(tree / "sim" / "timeline.py")
    assert "out of date" in res.stderr

    build()  # the edited source is compiled again, not the earlier extension kept
    assert run_py(check, tree).stdout.split()[0] == str(so)


SIMULATIONS = """
    import routing, sys
    from sim.cluster import simulate
    from sim_helpers import chat_trace, conversation_trace, fleet
    import labcore
    out = []
    for strategy, mode, trace_kind, extra in (
            ("least_load", "fast", "conversation", {}),
            ("least_load", "exact", "conversation", {}),
            ("prefix_affinity", "fast", "chat", {"async_scheduling": True}),
            ("cache_aware", "fast", "chat", {"blocks": 200, "timeout_s": 3.0}),
            ("power_of_two", "fast", "conversation", {"delay_s": 0.01, "budget": 256})):
        trace = (chat_trace if trace_kind == "chat" else conversation_trace)(40, seed=1, rate=12.0)
        events = []
        res = simulate(trace, routing.build(strategy, seed=1), fleet(mode=mode, **extra), seed=1,
                       kv_events=lambda b, e, t: events.append((b, e, t)))
        out.append(repr(res.records))
        out.append(repr(events))
    engine = ("sim.engine", "sim.scheduler", "sim.kv_cache", "sim.fast_path", "sim.decode_group",
              "sim.cluster")
    running = {labcore.status()[m]["running"] for m in engine}
    print(running, file=sys.stderr)
    print("\\n".join(out))
"""


def repository_build_missing() -> str | None:
    built = {k: v["build"] for k, v in labcore.status().items()}
    engine = ("sim.engine", "sim.scheduler", "sim.kv_cache", "sim.fast_path", "sim.decode_group",
              "sim.cluster")
    if any(built[m] != "compiled" for m in engine):
        return ("the compiled core is not built in this checkout (VLLM_LAB_COMPILE=all "
                "python setup.py build_ext --inplace builds it)")
    return None


@pytest.mark.slow
@pytest.mark.skipif(repository_build_missing() is not None, reason=str(repository_build_missing()))
def test_compiled_and_pure_python_simulations_write_the_same_records():
    env = {"PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests' / 'sim'}"}
    runs = {}
    for pure in ("0", "1"):
        res = subprocess.run([sys.executable, "-c", textwrap.dedent(SIMULATIONS)], cwd=REPO, text=True,
                             capture_output=True, timeout=600,
                             env={**CLEAN_ENV, **env, labcore.PURE_ENV: pure})
        assert res.returncode == 0, res.stderr[-3000:]
        runs[pure] = res
    assert "{'compiled'}" in runs["0"].stderr and "{'pure Python'}" in runs["1"].stderr
    assert len(runs["0"].stdout) > 10_000
    assert runs["0"].stdout == runs["1"].stdout
