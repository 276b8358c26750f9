"""Builds the compiled core: Cython compiles ``labcore.build_list()`` from the project's own sources.

Metadata lives in setup.cfg; this file only adds the extensions: ``labcore.COMPILED``,
or the modules ``VLLM_LAB_COMPILE`` names (``all``: every candidate). Each module is
cythonized as it is (from its typed ``.pyx`` twin where it has one) into
``<package>/_compiled/<module><EXT_SUFFIX>`` with a ``<module>.sha256`` beside it
(the hash of the source it was built from), where ``labcore``'s finder looks;
nothing there shadows the ``.py``. Every extension is
optional: without Cython, a C compiler or Python's headers the install still
succeeds and the simulator runs as pure Python (``labcore`` says so at run time).
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext as _build_ext

ROOT = Path(__file__).resolve().parent
# labcore imports nothing of the project; load it by path so the build does not
# depend on sys.path (PEP 517 backends do not put the project root on it).
_spec = importlib.util.spec_from_file_location("_labcore_for_build", ROOT / "labcore" / "__init__.py")
labcore = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(labcore)

# Python semantics exactly: annotations are not read as C types (an ``int`` hint
# would reject numpy integers), no C division, bounds or wraparound shortcuts.
DIRECTIVES = {"language_level": 3, "annotation_typing": False, "binding": True}


def _extension_name(module: str) -> str:
    """``sim.engine`` is built as ``sim._compiled.engine``: the file lands in ``sim/_compiled/``."""
    package, _, leaf = module.rpartition(".")
    return f"{package}.{labcore.SUBDIR}.{leaf}"


def _source(module: str) -> str:
    """The file Cython compiles: the module's typed ``.pyx`` twin if it has one, else its ``.py``."""
    py = Path(*module.split(".")).with_suffix(".py")
    return str(labcore.build_source(ROOT / py).relative_to(ROOT))


class build_ext(_build_ext):
    """Cythonizes each module (cached by source hash), compiles it, records the hash."""

    def finalize_options(self):
        super().finalize_options()
        if self.parallel is None:
            self.parallel = os.cpu_count() or 1

    def run(self):
        self.hashes: dict[str, str] = {}
        try:
            from Cython import __version__ as cython_version
            from Cython.Build import cythonize
        except ImportError:
            self._skip_all("Cython is not installed")
            return
        kept = []
        for ext in self.extensions:
            module = ext.module
            digest = labcore.source_hash(ROOT / Path(*module.split(".")).with_suffix(".py"))
            key = hashlib.sha256(f"{digest} {cython_version} {sorted(DIRECTIVES.items())}".encode())
            c_dir = Path(self.build_temp) / "cython" / key.hexdigest()[:20]
            try:
                # Compiled under the module's real name (classes, pickling, tracebacks),
                # then built as the _compiled/ file; the init symbol is the same leaf.
                (cy,) = cythonize([Extension(module, [_source(module)])], build_dir=str(c_dir),
                                  compiler_directives=DIRECTIVES, quiet=True)
            except Exception as e:  # a Cython error skips this module only
                self.warn(f"compiled core: {module} not cythonized ({e}); it runs as pure Python")
                continue
            ext.sources = cy.sources
            self.hashes[ext.name] = digest
            self._drop_mismatched(ext, digest)
            kept.append(ext)
        self.extensions = kept
        if self.inplace:  # setuptools copies into the source tree but makes no directory
            for ext in self.extensions:
                Path(self.get_ext_fullpath(ext.name)).parent.mkdir(parents=True, exist_ok=True)
        super().run()
        for ext in self.extensions:
            targets = [self._built(ext)]
            if self.inplace:  # editable installs and --inplace: also copied into the source tree
                targets.append(Path(self.get_ext_fullpath(ext.name)))
            ok = targets[0].is_file()  # False: the optional build failed (warned above)
            for so in targets:
                sha = so.with_name(so.name.split(".", 1)[0] + ".sha256")
                if ok:
                    sha.write_text(self.hashes[ext.name] + "\n")
                else:  # never leave an older extension beside the new source's hash
                    so.unlink(missing_ok=True)
                    sha.unlink(missing_ok=True)

    def _built(self, ext) -> Path:
        """Where the build puts the extension before any in-place copy."""
        return Path(self.build_lib) / self.get_ext_filename(self.get_ext_fullname(ext.name))

    def _drop_mismatched(self, ext, digest):
        """An up-to-date-looking extension built from other source must be rebuilt."""
        so = self._built(ext)
        sha = so.with_name(so.name.split(".", 1)[0] + ".sha256")
        if so.exists() and (not sha.exists() or sha.read_text().strip() != digest):
            so.unlink()

    def _skip_all(self, why):
        self.warn(f"compiled core skipped: {why}; the simulator will run as pure Python")
        self.extensions = []


extensions = []
for _module in labcore.build_list():
    _ext = Extension(_extension_name(_module), [_source(_module)], optional=True)
    _ext.module = _module
    extensions.append(_ext)

setup(ext_modules=extensions, cmdclass={"build_ext": build_ext})
