"""A known latency law for the predictor tests (independent of the code under test)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from predictors import make_model

#: ttft = A + B * input_len + C * inflight_requests + G * (group == "g1") + noise
A, B, C, G = 0.02, 1e-4, 0.01, 0.05


def known_rows(n: int, seed: int, noise: float = 0.01, noise_kind: str = "normal") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    input_len = rng.integers(16, 4096, n)
    inflight = rng.integers(0, 30, n)
    group = np.where(rng.random(n) < 0.5, "g0", "g1")
    unscraped = rng.random(n) < 0.1
    running = np.where(unscraped, np.nan, np.minimum(inflight, 16)).astype(float)
    waiting = np.where(unscraped, np.nan, np.maximum(inflight - 16, 0)).astype(float)
    kv = np.where(unscraped, np.nan, rng.random(n))
    age = np.where(unscraped, np.inf, rng.uniform(0, 0.5, n))
    if noise_kind == "normal":
        eps = rng.normal(0.0, noise, n)
    else:  # exponential: skewed, like latency tails
        eps = rng.exponential(noise, n)
    ttft = A + B * input_len + C * inflight + G * (group == "g1") + eps
    return pd.DataFrame(
        {
            "input_len": input_len,
            "prefix_hit_tokens": (rng.random(n) * input_len // 32 * 16).astype(int),
            "inflight_requests": inflight,
            "inflight_tokens": inflight * rng.integers(100, 1000, n),
            "running": running,
            "waiting": waiting,
            "kv_usage": kv,
            "scrape_age_s": age,
            "group": group,
            "ttft_s": ttft,
            "tpot_s": 0.01 + 0.001 * inflight,
            "e2el_s": ttft + 0.5,
            "output_len": 50,
            "cached_tokens": 0,
        }
    )


def law(frame: pd.DataFrame) -> np.ndarray:
    """The noiseless ttft of each row."""
    return (
        A + B * frame["input_len"] + C * frame["inflight_requests"] + G * (frame["group"] == "g1")
    ).to_numpy()


def fast_rows(frame: pd.DataFrame) -> tuple[list[tuple], list[str]]:
    """The routing fast path's input for the rows of ``frame``."""
    from predictors import NUMERIC_FEATURES

    rows = [tuple(r) for r in frame[list(NUMERIC_FEATURES)].to_numpy(np.float64).tolist()]
    return rows, frame["group"].astype(str).tolist()


#: Small settings so the whole family trains in seconds.
PARAMS = {
    "linear": {},
    "tree": {},
    "mlp": {"hidden": [32, 32], "epochs": 40},
    "transformer": {"epochs": 4},
    "distill": {"teacher_epochs": 4, "augment": 1.0},
    "online_linear": {},
}
_FITTED: dict[tuple, object] = {}


def fitted(kind: str, quantile: float | None = None, noise_kind: str = "normal"):
    """Each (kind, quantile, noise) is trained once per session on 2000 rows of the law."""
    key = (kind, quantile, noise_kind)
    if key not in _FITTED:
        train = known_rows(2000, seed=1, noise=0.02 if noise_kind != "normal" else 0.01, noise_kind=noise_kind)
        model = make_model(kind, quantile=quantile, seed=0, **PARAMS[kind])
        _FITTED[key] = model.fit(train, train["ttft_s"])
    return _FITTED[key]
