"""Arrival processes: request send times in seconds from the start of a run.

Each takes a request count ``n`` or a horizon ``duration_s`` and its own seeded
generator, so a seed fixes the times bit for bit. ``gamma`` reproduces
``vllm bench serve`` exactly (see ``gamma_arrivals``).
"""
from __future__ import annotations

import math

import numpy as np

from workload.config import ArrivalSpec


def _need_one(n: int | None, duration_s: float | None) -> None:
    if n is None and duration_s is None:
        raise ValueError("give a request count n or a horizon duration_s")
    if n is not None and n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if duration_s is not None and not duration_s > 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s}")


def _unit_poisson(rng: np.random.Generator, n: int | None, horizon: float | None) -> np.ndarray:
    """Event times of a rate-1 Poisson process: the first ``n``, or all up to ``horizon``."""
    if n is not None:
        return np.cumsum(rng.exponential(1.0, size=n))
    parts, t = [], 0.0
    chunk = int(horizon + 6 * math.sqrt(horizon) + 16)
    while True:
        times = t + np.cumsum(rng.exponential(1.0, size=chunk))
        if times[-1] > horizon:
            parts.append(times[times <= horizon])
            return np.concatenate(parts)
        parts.append(times)
        t = float(times[-1])


def poisson_arrivals(
    rate: float, rng: np.random.Generator, *, n: int | None = None, duration_s: float | None = None
) -> np.ndarray:
    """Homogeneous Poisson process: exponential gaps with mean ``1 / rate``."""
    _need_one(n, duration_s)
    horizon = None if n is not None else duration_s * rate
    return _unit_poisson(rng, n, horizon) / rate


def gamma_arrivals(
    rate: float,
    burstiness: float,
    seed: int,
    *,
    n: int | None = None,
    duration_s: float | None = None,
) -> np.ndarray:
    """``vllm bench serve``'s arrivals (``get_request`` in ``vllm/benchmarks/serve.py``).

    Gaps ~ Gamma(shape=burstiness, scale=1/(rate*burstiness)) drawn from numpy's
    legacy Mersenne-Twister stream seeded with ``seed`` (vLLM calls
    ``np.random.seed(args.seed)`` then ``np.random.gamma`` once per request; a local
    ``RandomState(seed)`` yields the same numbers without touching global state).
    The cumulative times are then scaled so the last request is sent at exactly
    ``n / rate``. ``burstiness = inf`` gives constant gaps of ``1 / rate``. Same
    seed and parameters give vLLM's times, provided vLLM drew nothing else from
    the global generator first (some of its dataset samplers do).
    With only ``duration_s``, ``n = floor(rate * duration_s)`` (vLLM needs a count).
    """
    _need_one(n, duration_s)
    if n is None:
        n = int(math.floor(rate * duration_s))
    if n == 0:
        return np.zeros(0)
    if math.isinf(burstiness):
        delays = np.full(n, 1.0 / rate)
    else:
        rs = np.random.RandomState(seed)
        delays = rs.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=n)
    times = np.cumsum(delays)
    if times[-1] != 0:
        times = times * ((n / rate) / times[-1])
    return times


def constant_arrivals(
    rate: float, *, n: int | None = None, duration_s: float | None = None
) -> np.ndarray:
    """One request every ``1 / rate`` s, the first at ``1 / rate`` (as vLLM's infinite burstiness)."""
    _need_one(n, duration_s)
    if n is None:
        n = int(math.floor(rate * duration_s * (1 + 1e-12)))
    return np.arange(1, n + 1, dtype=np.float64) / rate


def burst_arrivals(
    base_rate: float,
    peak_rate: float,
    on_s: float,
    off_s: float,
    rng: np.random.Generator,
    *,
    n: int | None = None,
    duration_s: float | None = None,
) -> np.ndarray:
    """A Poisson process whose rate is a square wave: ``base_rate`` for ``off_s`` seconds,
    then ``peak_rate`` for ``on_s`` seconds, repeating (starting with an off period).

    Exact, by time rescaling: rate-1 Poisson event times are mapped through the
    inverse of the cumulative intensity, which is piecewise linear.
    """
    _need_one(n, duration_s)
    if peak_rate <= 0:
        raise ValueError(f"peak_rate must be > 0, got {peak_rate}")
    cycle = off_s + on_s
    off_mass = base_rate * off_s
    cycle_mass = off_mass + peak_rate * on_s
    horizon = None
    if n is None:
        k, r = divmod(duration_s, cycle)
        horizon = k * cycle_mass + (base_rate * r if r <= off_s else off_mass + peak_rate * (r - off_s))
    s = _unit_poisson(rng, n, horizon)
    k = np.floor(s / cycle_mass)
    r = s - k * cycle_mass
    in_off = r < off_mass
    with np.errstate(divide="ignore", invalid="ignore"):
        t_off = r / base_rate
    t_on = off_s + (r - off_mass) / peak_rate
    t = k * cycle + np.where(in_off, t_off, t_on)
    if duration_s is not None:
        t = t[t <= duration_s]
    return t


def replay_arrivals(
    timestamps: np.ndarray, *, time_scale: float = 1.0, target_rate: float = 0.0
) -> np.ndarray:
    """A dataset's own (sorted) timestamps relative to the first, sped up ``time_scale`` times,
    or scaled so the mean gap is ``1 / target_rate`` (when ``target_rate`` > 0)."""
    ts = np.asarray(timestamps, dtype=np.float64)
    if len(ts) == 0:
        return ts.copy()
    if np.any(~np.isfinite(ts)):
        raise ValueError("replay needs a finite timestamp for every request")
    if len(ts) > 1 and np.any(np.diff(ts) < 0):
        raise ValueError("replay timestamps must be sorted")
    rel = ts - ts[0]
    if target_rate > 0:
        span = rel[-1]
        if len(ts) < 2 or span <= 0:
            raise ValueError("target_rate needs at least two distinct timestamps")
        return rel * ((len(ts) - 1) / (target_rate * span))
    return rel / time_scale


def generate_arrivals(
    spec: ArrivalSpec, seed: int, *, n: int | None = None, duration_s: float | None = None
) -> np.ndarray:
    """Arrival times for every pattern except ``replay`` (which needs the requests' timestamps)."""
    rng = np.random.default_rng([seed, 0xA2])
    if spec.pattern == "poisson":
        return poisson_arrivals(spec.rate, rng, n=n, duration_s=duration_s)
    if spec.pattern == "gamma":
        return gamma_arrivals(spec.rate, spec.burstiness, seed, n=n, duration_s=duration_s)
    if spec.pattern == "constant":
        return constant_arrivals(spec.rate, n=n, duration_s=duration_s)
    if spec.pattern == "burst":
        return burst_arrivals(
            spec.base_rate, spec.peak_rate, spec.on_s, spec.off_s, rng, n=n, duration_s=duration_s
        )
    raise ValueError(f"pattern {spec.pattern!r} has no generator here (replay uses timestamps)")
