"""Fixtures for the workload tests: isolated caches and a shared tokenizer."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """No test reads or writes the user's real cache."""
    monkeypatch.setenv("VLLM_LAB_CACHE", str(tmp_path / "lab-cache"))


@pytest.fixture(scope="session")
def deepseek():
    from workload.tokenizer import load_tokenizer

    return load_tokenizer("deepseek")


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory):
    """One pool cache for the whole session, so each real dataset is tokenized once."""
    return tmp_path_factory.mktemp("session-cache")
