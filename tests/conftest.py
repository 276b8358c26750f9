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
