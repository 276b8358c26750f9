"""Suite-wide test settings."""
from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _workload_cache(tmp_path_factory):
    """Tokenized dataset pools go to one cache shared by the session, not the user's home.

    Set VLLM_LAB_CACHE yourself to reuse a cache across test runs.
    """
    if "VLLM_LAB_CACHE" in os.environ:
        yield
        return
    os.environ["VLLM_LAB_CACHE"] = str(tmp_path_factory.mktemp("vllm-lab-cache"))
    try:
        yield
    finally:
        os.environ.pop("VLLM_LAB_CACHE", None)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``vllm`` need a real vLLM: they run only when ``-m`` names that marker.

    This replaces a ``-m "not vllm"`` default, which any ``-m`` given on the command
    line would override: so ``pytest -m "not slow"`` (the fast inner loop) still
    leaves them out, and ``pytest -m vllm`` runs them.
    """
    if "vllm" in (config.option.markexpr or ""):
        return
    kept, skipped = [], []
    for item in items:
        (skipped if item.get_closest_marker("vllm") else kept).append(item)
    if skipped:
        config.hook.pytest_deselected(items=skipped)
        items[:] = kept
