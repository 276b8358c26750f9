"""Bootstrap intervals for latency percentiles: seeds first, then blocks of requests.

Why not the Student-t interval over seeds that every other metric gets? A p99 of
one run is decided by its few slowest requests, and those often come from one
queueing episode: a run either had one or did not. Five seeds then say little,
and the t-interval, which sees only the five per-seed values, covers the true mean
too rarely. The interval here also uses what each run knows about its own tail,
its requests.

Two stages (the hierarchical bootstrap; Davison and Hinkley, *Bootstrap Methods
and their Application*, 1997, section 3.8):

1. **Within a run** (``unit_replicates``): ``R`` moving-block resamples of the
   run's requests in arrival order (Kunsch, Annals of Statistics 1989): blocks of
   ``ceil(n ** (1/3))`` consecutive requests (the rate Hall, Horowitz and Jing,
   Biometrika 1995, give for variance estimation), so requests that queued
   together stay together. Each resample's percentile minus the mean of the ``R``
   resamples is a *deviation*: what the run's percentile could have been, centred
   on the value it had (so the bootstrap's own bias at extreme quantiles does not
   move the interval).
2. **Across seeds** (``two_stage``): each of ``B`` draws picks ``n`` seeds with
   replacement and, for each, the seed's value plus one of its deviations; the
   draw is their mean.

The interval is the **expanded percentile interval** of the draws (Hesterberg, The
American Statistician 2015; ``expanded_interval``), which corrects the narrowness
of a bootstrap over few seeds. Resampling both stages counts within-run noise
twice (it is already part of how the seeds differ), so with no queueing episodes
the interval is conservative. Measured on a known case (lognormal latencies with
autocorrelation, five seeds, 800 requests each, ``tests/results/test_results_bootstrap.py``),
the coverage of a nominal 95% interval for the mean p99 was:

- no queueing episodes, no seed effect: t-interval 0.95, this interval 1.00;
- a normal seed effect: 0.96 and 0.98;
- queueing episodes (0.7 per run, Poisson): 0.79 and 0.94.

Comparisons are paired: two strategies of a grid point ran the same traces, so a
draw uses the same seeds *and the same resampled requests* for both (the resample
positions depend on the grid point, the seed and the run's length only, never on
the strategy), and the difference of the two means is bootstrapped. The test
(``bootstrap_t``) divides the mean difference by the draws' standard deviation,
expanded the same way, and reads Student's t with ``n - 1`` degrees of freedom:
with no within-run noise it is exactly the paired t-test.

Everything is seeded from stable hashes of the labels (``zlib.crc32``), so the same
run gives the same intervals in every process and on every machine.
"""
from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence

import numpy as np

#: Latencies and percentile statistics that get bootstrap intervals.
LATENCIES = ("ttft", "tpot", "e2el")
PERCENTILE_STATS = {"median": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0}
BOOTSTRAP_METRICS = {f"{stat}_{lat}_ms": (lat, q) for lat in LATENCIES
                     for stat, q in PERCENTILE_STATS.items()}
#: Within-run resamples per unit (fewer for large runs, see ``replicates_for``).
REPLICATES = 200
#: Runs up to this many requests get all ``REPLICATES``.
FULL_REPLICATES_UP_TO = 20_000
#: Two-stage draws per interval or comparison (the expanded interval at five seeds
#: reads the 0.1% quantiles, so enough draws that those are stable).
DRAWS = 20000
#: Resampled request positions held in memory at once (rows x requests).
_CHUNK_CELLS = 1 << 22


def rng_for(*key: object) -> np.random.Generator:
    """A generator seeded by the labels (``crc32`` of their text: stable across processes)."""
    text = "\x1f".join(str(k) for k in key).encode()
    return np.random.default_rng([zlib.crc32(text), len(text)])


def block_length(n: int) -> int:
    """Moving-block length for ``n`` requests: ``ceil(n ** (1/3))``, at least 1."""
    return max(1, math.ceil(n ** (1.0 / 3.0))) if n > 0 else 1


def replicates_for(n: int) -> int:
    """Within-run resamples for a run of ``n`` requests: ``REPLICATES`` up to
    ``FULL_REPLICATES_UP_TO`` requests, then fewer (at least 50) so the cost, which
    grows with ``R x n``, stays near that of the largest full run; a large run's
    percentile varies little within the run next to how it varies between seeds."""
    if n <= FULL_REPLICATES_UP_TO:
        return REPLICATES
    return max(50, int(REPLICATES * FULL_REPLICATES_UP_TO / n))


def block_positions(n: int, rows: int, rng: np.random.Generator) -> np.ndarray:
    """``rows`` moving-block resamples of positions ``0..n-1`` (shape ``rows x n``)."""
    length = min(block_length(n), n)
    blocks = -(-n // length)
    starts = rng.integers(0, n - length + 1, size=(rows, blocks))
    pos = (starts[:, :, None] + np.arange(length)[None, None, :]).reshape(rows, blocks * length)
    return pos[:, :n]


def row_percentiles(values: np.ndarray, qs: Sequence[float]) -> np.ndarray:
    """Per row, ``np.percentile`` (linear) of its finite values; NaN for a row without any.

    ``values`` is ``rows x n`` with NaN for missing entries; returns ``rows x len(qs)``.
    """
    v = np.where(np.isnan(values), np.inf, values)
    v.sort(axis=1)
    count = np.isfinite(v).sum(axis=1)
    out = np.full((v.shape[0], len(qs)), np.nan)
    have = count > 0
    if not have.any():
        return out
    rows = np.nonzero(have)[0]
    c = count[have].astype(np.float64)
    for j, q in enumerate(qs):
        pos = q / 100.0 * (c - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, count[have] - 1)
        a, b = v[rows, lo], v[rows, hi]
        t = pos - lo
        # numpy's _lerp: exact at both ends
        out[rows, j] = np.where(t >= 0.5, b - (b - a) * (1 - t), a + (b - a) * t)
    return out


def unit_replicates(latencies: Mapping[str, np.ndarray], point_id: str, seed: int,
                    replicates: int | None = None) -> dict[str, np.ndarray]:
    """Deviations of every ``BOOTSTRAP_METRICS`` value of one run (see the module docstring).

    ``latencies`` maps ``ttft``/``tpot``/``e2el`` to one value per request in arrival
    order, in milliseconds, NaN where the request has none (not ok; TPOT of a single
    token). All arrays have the run's request count ``n``; the resampled positions
    depend on ``(point_id, seed, n)`` only, so two strategies' deviations are paired.
    """
    lengths = {len(x) for x in latencies.values()}
    if len(lengths) > 1:
        raise ValueError(f"latency arrays of one run differ in length: {sorted(lengths)}")
    n = lengths.pop() if lengths else 0
    out = {m: np.zeros(0) for m in BOOTSTRAP_METRICS}
    if n == 0:
        return out
    reps = replicates if replicates is not None else replicates_for(n)
    rng = rng_for("requests", point_id, seed, n)
    qs = list(PERCENTILE_STATS.values())
    stats = list(PERCENTILE_STATS)
    parts: dict[str, list[np.ndarray]] = {lat: [] for lat in latencies}
    step = max(1, _CHUNK_CELLS // n)
    for lo in range(0, reps, step):
        pos = block_positions(n, min(step, reps - lo), rng)
        for lat, x in latencies.items():
            parts[lat].append(row_percentiles(np.asarray(x, dtype=np.float64)[pos], qs))
    for lat, chunks in parts.items():
        values = np.concatenate(chunks, axis=0)
        for j, stat in enumerate(stats):
            col = values[:, j]
            out[f"{stat}_{lat}_ms"] = col - np.nanmean(col) if np.isfinite(col).any() else np.zeros(0)
    return out


def _draw(n: int, draws: int, key: tuple) -> tuple[np.ndarray, np.ndarray]:
    """``draws`` x ``n`` seed picks (indices into the seeds) and replicate picks in [0, 1)."""
    rng = rng_for("draws", *key)
    pick = rng.integers(0, n, size=(draws, n))
    rep = rng.random(size=(draws, n))
    return pick, rep


def _values(pick: np.ndarray, rep: np.ndarray, base: np.ndarray, dev: Sequence[np.ndarray]) -> np.ndarray:
    """Each draw's seed values plus one of the chosen seed's deviations (none: 0)."""
    out = base[pick].astype(np.float64)
    for i, d in enumerate(dev):
        if len(d) == 0:
            continue
        chosen = pick == i
        out[chosen] += d[np.minimum((rep[chosen] * len(d)).astype(np.int64), len(d) - 1)]
    return out


def two_stage(values: Mapping[int, float], deviations: Mapping[int, np.ndarray],
              key: tuple, draws: int = DRAWS) -> np.ndarray:
    """``draws`` two-stage bootstrap means of one strategy's per-seed ``values``.

    ``deviations[seed]``: that run's within-run deviations (``unit_replicates``;
    missing or empty: the seed's value is used as is). ``key`` seeds the draws:
    give every strategy of a grid point the same key so they draw the same seeds.
    """
    seeds = [s for s in sorted(values) if math.isfinite(values[s])]
    if not seeds:
        return np.zeros(0)
    base = np.array([values[s] for s in seeds], dtype=np.float64)
    dev = [np.asarray(deviations.get(s, np.zeros(0)), dtype=np.float64) for s in seeds]
    dev = [d[np.isfinite(d)] for d in dev]
    pick, rep = _draw(len(seeds), draws, key)
    return _values(pick, rep, base, dev).mean(axis=1)


def paired_two_stage(a: Mapping[int, float], b: Mapping[int, float],
                     dev_a: Mapping[int, np.ndarray], dev_b: Mapping[int, np.ndarray],
                     key: tuple, draws: int = DRAWS) -> np.ndarray:
    """``draws`` two-stage bootstrap means of ``a - b`` over the seeds both have.

    A draw uses the same seeds and, within a seed, the same replicate index for both
    (the same resampled requests, see ``unit_replicates``). Where the two runs of a
    seed have different replicate counts (runs of different lengths past
    ``FULL_REPLICATES_UP_TO`` requests) their resamples are not paired anyway, so
    each side's deviation is drawn independently and both sides' within-run noise
    counts. Returns an empty array when no seed has a finite value on both sides.
    """
    seeds = [s for s in sorted(set(a) & set(b)) if math.isfinite(a[s]) and math.isfinite(b[s])]
    if not seeds:
        return np.zeros(0)
    base = np.array([a[s] - b[s] for s in seeds], dtype=np.float64)
    dev, dev_b_alone = [], []
    for s in seeds:
        da = np.asarray(dev_a.get(s, np.zeros(0)), dtype=np.float64)
        db = np.asarray(dev_b.get(s, np.zeros(0)), dtype=np.float64)
        alone = np.zeros(0)
        if len(da) and len(db) and len(da) == len(db):
            d = da - db
        elif len(da) and len(db):  # unpaired replicates: b gets its own draws below
            d, alone = da, db
        else:  # one side has no replicates: use what there is
            d = da if len(da) else -db
        dev.append(_finite(d))
        dev_b_alone.append(_finite(alone))
    pick, rep = _draw(len(seeds), draws, key)
    out = _values(pick, rep, base, dev)
    if any(len(d) for d in dev_b_alone):
        rep_b = rng_for("draws-b", *key).random(size=rep.shape)
        out -= _values(pick, rep_b, np.zeros(len(seeds)), dev_b_alone)
    return out.mean(axis=1)


def _finite(d: np.ndarray) -> np.ndarray:
    """Deviations as float64 with non-finite entries set to 0."""
    return np.where(np.isfinite(d), d, 0.0)


def expansion(n: int) -> float:
    """Hesterberg's small-sample expansion ``sqrt(n / (n - 1))`` (1 for ``n < 2``)."""
    return math.sqrt(n / (n - 1)) if n >= 2 else 1.0


def expanded_interval(draws: np.ndarray, n: int, level: float = 0.95) -> tuple[float, float]:
    """The expanded percentile interval of bootstrap ``draws`` over ``n`` seeds.

    A percentile interval over few seeds is too narrow: resampling ``n`` values
    has ``(n - 1) / n`` of their variance and a normal, not a Student-t, shape. The
    expanded percentile interval (Hesterberg, "What Teachers Should Know About the
    Bootstrap", The American Statistician 2015) takes the quantiles ``a`` and
    ``1 - a`` of the draws with ``Phi^-1(a) = sqrt(n / (n - 1)) * t_{n-1}^-1((1 - level) / 2)``:
    at ``n = 5`` and 95%, ``a = 0.00095``. With one seed (only within-run draws) it is
    the plain percentile interval. NaN without draws.
    """
    from scipy.special import ndtr, stdtrit

    x = np.asarray(draws, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return math.nan, math.nan
    tail = (1 - level) / 2
    if n >= 2:
        tail = float(ndtr(expansion(n) * stdtrit(n - 1, tail)))
    lo, hi = np.percentile(x, [100 * tail, 100 * (1 - tail)])
    return float(lo), float(hi)


def bootstrap_t(diff: float, draws: np.ndarray, n: int, level: float = 0.95) -> dict[str, float]:
    """Test "the difference is 0" with the two-stage bootstrap's standard error.

    ``se = sd(draws) * sqrt(n / (n - 1))`` (the same expansion), ``T = diff / se``
    against Student's t with ``n - 1`` degrees of freedom (the normal with one
    seed); the interval is ``diff +- t * se``. With no within-run noise this is the
    paired t-test; with it, the standard error also carries each run's own tail
    uncertainty, which the t-test over seeds cannot see. p is NaN without draws.
    """
    from scipy.special import ndtr, ndtri, stdtr, stdtrit

    x = np.asarray(draws, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) < 2 or not math.isfinite(diff):
        return {"se": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan}
    se = float(np.std(x)) * expansion(n)
    if n >= 2:
        crit = float(stdtrit(n - 1, 0.5 + level / 2))
    else:
        crit = float(ndtri(0.5 + level / 2))
    if se == 0:
        p = 0.0 if diff != 0 else 1.0
    else:
        z = -abs(diff) / se
        p = float(2 * (stdtr(n - 1, z) if n >= 2 else ndtr(z)))
    return {"se": se, "ci_low": diff - crit * se, "ci_high": diff + crit * se, "p_value": min(1.0, p)}
