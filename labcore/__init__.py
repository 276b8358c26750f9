"""The compiled core: which modules Cython builds, and the import hook that loads them only when current.

The simulator's modules are ordinary Python files and stay the reference.
``setup.py`` can build any of ``CANDIDATES`` with Cython, as they are (or, for a
module with a typed ``.pyx`` twin beside its ``.py``, from the twin), into
``<package>/_compiled/<module><EXT_SUFFIX>`` beside a ``<module>.sha256`` holding
the hash of the source it was built from. The default import system never looks in
``_compiled/`` (not a package; the files are not named after a module there), so an
extension cannot shadow its ``.py``. ``install(package, dir)`` puts ``CompiledFinder``
first on ``sys.meta_path``: it loads an extension only when the recorded hash equals
the current ``.py``'s, else the ``.py`` (an edited source is never silently ignored)
and says once, on one line of stderr, that the core is stale and how to rebuild.
``VLLM_LAB_PURE_PYTHON=1`` forces the pure-Python reference. ``python -m labcore``
prints each module's state.

What is built: ``COMPILED`` by default, or the modules named in
``VLLM_LAB_COMPILE`` at build time (``all`` for every candidate). Compiling the
simulator's modules unchanged made it no faster on CPython 3.11 (docs/performance.md,
"The compiled core"): its specialising interpreter already does what Cython does for
untyped attribute-heavy code. A module earns a place in ``COMPILED`` once a typed
version measures faster; so far only ``routing.decision_core``, whose ``.pyx`` twin
keeps the routing decision's owner masks in flat tables.

This package imports nothing of the project: ``sim`` and ``routing`` install the
finder from their ``__init__``, and ``setup.py`` loads this file by path.
"""
from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import os
import sys
from pathlib import Path

# Modules measured as compiled-as-they-are candidates (the hot path of a simulation).
CANDIDATES: tuple[str, ...] = (
    "sim.engine", "sim.scheduler", "sim.kv_cache", "sim.fast_path", "sim.decode_group",
    "sim.cluster", "sim.request", "sim.plan", "sim.timeline", "sim.itl", "sim.frontend",
    "sim.latency", "sim.sessions",
    "routing.router", "routing.prefix_index", "routing.types", "routing.active",
    "routing.strategies.heuristics", "routing.strategies.cache_affinity",
    "routing.strategies.picking", "routing.decision_core",
)
# Built by a plain install; a missing one is reported at run time. Only modules whose
# compiled form measured faster: ``routing.decision_core``, a typed .pyx twin
# (docs/performance.md, "A decision over flat tables").
COMPILED: tuple[str, ...] = ("routing.decision_core",)

PURE_ENV = "VLLM_LAB_PURE_PYTHON"
BUILD_ENV = "VLLM_LAB_COMPILE"
# Set once this process (or its parent) has printed the notice, so a worker pool
# does not repeat it per worker.
NOTICE_ENV = "VLLM_LAB_CORE_NOTICE_SHOWN"
SUBDIR = "_compiled"
REBUILD = "pip install -e . (or: python setup.py build_ext --inplace)"


def build_list(environ: dict[str, str] | None = None) -> tuple[str, ...]:
    """The modules a build compiles: ``VLLM_LAB_COMPILE`` (comma-separated, or ``all``) or ``COMPILED``."""
    raw = (os.environ if environ is None else environ).get(BUILD_ENV, "").strip()
    if not raw:
        return COMPILED
    if raw == "all":
        return CANDIDATES
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        raise ValueError(f"{BUILD_ENV}: unknown module(s) {', '.join(unknown)}; allowed: 'all' "
                         f"or a comma-separated list of {', '.join(CANDIDATES)}")
    return names


def forced_pure() -> bool:
    """True when the environment asks for the pure-Python reference."""
    return os.environ.get(PURE_ENV, "").strip() not in ("", "0")


def source_hash(path: Path) -> str:
    """The hash the build records for a module's source: sha256 of the ``.py``'s bytes, and
    of the augmenting ``.pxd`` and the typed ``.pyx`` twin beside it if there are (either
    changes the compiled code too)."""
    digest = hashlib.sha256(path.read_bytes())
    for ext in (".pxd", ".pyx"):
        other = path.with_suffix(ext)
        if other.is_file():
            digest.update(b"\0" + ext[1:].encode() + b"\0" + other.read_bytes())
    return digest.hexdigest()


def build_source(path: Path) -> Path:
    """What Cython compiles for the module whose source is ``path``: its typed ``.pyx``
    twin if it has one (the ``.py`` is then the pure-Python reference), else the ``.py``."""
    pyx = path.with_suffix(".pyx")
    return pyx if pyx.is_file() else path


def compiled_paths(py: Path) -> tuple[Path, Path]:
    """Where the extension built from ``py`` for this Python and its source hash live."""
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    return py.parent / SUBDIR / f"{py.stem}{suffix}", py.parent / SUBDIR / f"{py.stem}.sha256"


def module_state(py: Path) -> str:
    """``compiled`` (built and current), ``stale`` (source changed since the build) or ``missing``."""
    so, digest = compiled_paths(py)
    if not py.is_file() or not so.is_file() or not digest.is_file():
        return "missing"
    return "compiled" if digest.read_text().strip() == source_hash(py) else "stale"


class _CompiledLoader(importlib.machinery.ExtensionFileLoader):
    """Loads the extension but sets ``__file__`` to the ``.py``.

    Modules find their data next to their source (``Path(__file__).parent``), and
    tracebacks and ``inspect`` read the source; ``__spec__.origin`` still names the
    extension that runs.
    """

    def __init__(self, name: str, path: str, source: str):
        super().__init__(name, path)
        self.source = source

    def create_module(self, spec):
        module = super().create_module(spec)
        module.__file__ = self.source
        return module


class CompiledFinder(importlib.abc.MetaPathFinder):
    """Finds a module's extension in ``_compiled/`` when it was built from the current source."""

    def __init__(self) -> None:
        self.roots: dict[str, Path] = {}  # top-level package -> its directory

    def source_of(self, fullname: str) -> Path | None:
        """The ``.py`` of a submodule of an installed package (None: not ours to find)."""
        top, _, rest = fullname.partition(".")
        if not rest or top not in self.roots:
            return None
        return self.roots[top].joinpath(*rest.split(".")).with_suffix(".py")

    def find_spec(self, fullname, path=None, target=None):
        py = self.source_of(fullname)
        if py is None:
            return None
        so, _ = compiled_paths(py)
        if not so.is_file():
            if fullname in COMPILED and not forced_pure():
                _notice(fullname, "missing")
            return None  # the ordinary finders load the .py
        if forced_pure():
            return None
        state = module_state(py)
        if state != "compiled":
            _notice(fullname, state)
            return None
        return importlib.machinery.ModuleSpec(
            fullname, _CompiledLoader(fullname, str(so), str(py)), origin=str(so))


_FINDER = CompiledFinder()
_noticed = False


def _notice(fullname: str, state: str) -> None:
    """One line per process tree: what is missing or stale and how to get it."""
    global _noticed
    if _noticed or os.environ.get(NOTICE_ENV):
        return
    _noticed = True
    os.environ[NOTICE_ENV] = "1"
    if state == "stale":
        msg = (f"the compiled core is out of date ({fullname}'s source changed since it was "
               f"built), so modules whose source changed run as pure Python; rebuild with {REBUILD}")
    else:
        msg = (f"the compiled core is not built for this Python ({fullname} has no extension), "
               f"so the simulator runs as pure Python, slower; building it needs Cython and a C "
               f"compiler with Python's headers (e.g. apt-get install gcc python3-dev), then {REBUILD}")
    print(f"vllm-routing-lab: {msg}; {PURE_ENV}=1 chooses pure Python and silences this",
          file=sys.stderr, flush=True)


def install(package: str, directory: str | os.PathLike) -> None:
    """Let ``package``'s modules load from current extensions in ``_compiled/`` (idempotent)."""
    _FINDER.roots[package] = Path(directory)
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def _source_for_status(fullname: str) -> Path:
    """Like ``CompiledFinder.source_of``, for packages not imported yet: they sit beside this one."""
    top, *rest = fullname.split(".")
    root = _FINDER.roots.get(top, Path(__file__).resolve().parent.parent / top)
    return root.joinpath(*rest).with_suffix(".py")


def status() -> dict[str, dict[str, str]]:
    """Per candidate module: its build state and, if imported, what this process runs."""
    out = {}
    for name in CANDIDATES:
        mod = sys.modules.get(name)
        if mod is None:
            running = "not imported"
        elif isinstance(getattr(mod, "__loader__", None), _CompiledLoader):
            running = "compiled"
        else:
            running = "pure Python"
        out[name] = {"build": module_state(_source_for_status(name)), "running": running}
    return out
