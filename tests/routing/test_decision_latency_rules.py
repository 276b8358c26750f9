"""``benchmarks/decision_latency.py`` says when the host, not the code, set its tails.

The benchmark itself is run by hand (docs/performance.md); this checks that its
report carries the host's stall readings and their verdict, and refuses a bad probe length.
"""
from __future__ import annotations

import pytest
from benchmark_scripts import load_benchmark

from calibrate import host_probe


def bench():
    return load_benchmark("decision_latency")


@pytest.mark.parametrize("shares, verdict", [((0.002, 0.03), "UNSTEADY HOST"), ((0.001, 0.004), ": steady")])
def test_the_cache_suite_prints_the_host_stall_readings_around_it(monkeypatch, capsys, shares, verdict):
    mod = bench()
    readings = iter(shares)
    probed = []

    def fake_stalls(seconds):
        probed.append(seconds)
        return {"stall_share": next(readings)}

    monkeypatch.setattr(host_probe, "stalls", fake_stalls)
    monkeypatch.setattr(mod, "CACHE_CASES", [("least_load (baseline)", "least_load", {})])
    assert mod.main(["--suite", "cache", "--cache-decisions", "20", "--cache-warmup", "10", "--repeats", "1",
                     "--host-probe-s", "0.5"]) == 0
    out = capsys.readouterr().out
    assert probed == [0.5, 0.5]
    assert f"{shares[0] * 100:.2f}% of the time before, {shares[1] * 100:.2f}% after" in out
    assert verdict in out and "least_load (baseline)" in out


def test_no_probe_when_asked_and_a_negative_length_is_refused(monkeypatch, capsys):
    mod = bench()
    monkeypatch.setattr(host_probe, "stalls", lambda seconds: pytest.fail("probed although --host-probe-s 0"))
    monkeypatch.setattr(mod, "CACHE_CASES", [("least_load (baseline)", "least_load", {})])
    assert mod.main(["--suite", "cache", "--cache-decisions", "20", "--cache-warmup", "10", "--repeats", "1",
                     "--host-probe-s", "0"]) == 0
    assert "hidden vCPU stalls" not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        mod.main(["--suite", "cache", "--host-probe-s", "-1"])
    assert "--host-probe-s must be >= 0, got -1" in capsys.readouterr().err


def test_the_predictive_suite_is_probed_too_after_its_training(monkeypatch, capsys):
    mod = bench()
    events = []
    monkeypatch.setattr(host_probe, "stalls", lambda seconds: events.append("probe") or {"stall_share": 0.02})
    trained = mod.train_models
    monkeypatch.setattr(mod, "train_models", lambda *a: events.append("train") or trained(*a))
    monkeypatch.setattr(mod, "CASES", [("least_load", "least_load", None, None)])
    assert mod.main(["--suite", "predictive", "--rows", "300", "--decisions", "50", "--warmup", "10",
                     "--repeats", "1", "--host-probe-s", "0.25"]) == 0
    assert events == ["train", "probe", "probe"]  # training is not inside the probed window
    out = capsys.readouterr().out
    assert "2.00% of the time before, 2.00% after: UNSTEADY HOST" in out and "least_load" in out
