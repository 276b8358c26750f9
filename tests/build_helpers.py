"""Whether this machine can compile the project's Cython extensions (tests that build or
expect a build skip, saying why, where it cannot)."""
from __future__ import annotations

import shutil
import sysconfig
from pathlib import Path


def why_cannot_build() -> str | None:
    """Why a real build cannot run here (None: it can)."""
    try:
        import Cython  # noqa: F401
    except ImportError:
        return "Cython is not installed (pip install -e '.[test]' brings it)"
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        return "no C compiler on the PATH"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file():
        return "no Python headers (Python.h; e.g. apt-get install python3-dev)"
    return None
