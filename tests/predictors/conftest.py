"""Shared by the predictor tests: rows from a known latency law."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from predictor_helpers import known_rows


@pytest.fixture(scope="session")
def known_train() -> pd.DataFrame:
    return known_rows(3000, seed=1)


@pytest.fixture(scope="session")
def known_test() -> pd.DataFrame:
    return known_rows(1000, seed=2)


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
