"""Pooled inter-token-latency statistics over arithmetic runs, without expanding them.

Records store each request's token-chunk gaps as arithmetic runs ``(start, step,
count)`` (see ``results.records``); gap ``k`` of a run is ``start + step * k``,
computed exactly as ``results.records.expand_itl`` computes it. ``vllm bench
serve`` pools every gap of every successful request into one list and takes
``np.mean``, ``np.std`` and ``np.percentile`` (linear interpolation) of it.

A 100k-request simulated run has ~25M gaps: expanding them costs 200 MB and a
sort. So this module works in two regimes:

* at most ``expand_limit`` gaps: expand and call numpy (bit-identical to vLLM's
  computation);
* more: the mean and standard deviation come from closed-form sums over each
  run, and each needed order statistic is *selected* exactly: a strided sample
  of the gaps brackets the wanted rank, one vectorised counting pass per bracket
  end verifies the bracket (how many gaps are <= v is computed per run from the
  run's formula, then corrected so it counts the same floats ``expand_itl``
  would produce), and only the gaps inside the bracket are expanded (a few
  hundred thousand at most). A bracket that fails verification is narrowed by
  bisection on the floats' ordered bit patterns, which always terminates.
  Memory stays bounded by the number of runs plus ``candidate_limit``, and the
  order statistics are the very floats numpy would pick, interpolated with
  numpy's own formula.

A unit of a million requests under heavy load has over 100M runs, too many to
hold (20 bytes each in the file, 40 here). ``pooled_itl_stats_stream`` takes a
function that yields the runs in chunks (``results.metrics`` reads them from the
record file, row group by row group) and makes one pass over them per sum,
sample, count and bracket: memory is one chunk plus ``candidate_limit`` gaps,
and the statistics are the same floats as ``pooled_itl_stats`` on the whole
arrays (the sums are taken over the same slices of runs, in the same order).
"""
from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

#: Up to this many gaps, expand and let numpy do it (fast and bit-identical).
EXPAND_LIMIT = 2_000_000
#: Gaps inside a bracket are expanded once the bracket holds at most this many.
CANDIDATE_LIMIT = 1_000_000
_SAMPLE_SIZE = 1 << 17
#: Runs summed at a time by the closed-form mean and std (bounds their temporaries).
_SUM_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class PooledStats:
    """Mean, population std (``np.std``) and percentiles of the pooled gaps, seconds."""

    n: int
    mean: float
    std: float
    percentiles: dict[float, float]


def pooled_itl_stats(
    start: np.ndarray,
    step: np.ndarray,
    count: np.ndarray,
    percentiles: Sequence[float] = (50, 90, 95, 99),
    *,
    expand_limit: int = EXPAND_LIMIT,
    candidate_limit: int = CANDIDATE_LIMIT,
) -> PooledStats:
    """Statistics of the union of the runs ``start[i] + step[i] * k``, ``k < count[i]``.

    Runs with ``count <= 0`` or a non-finite start/step are ignored. With no gap
    at all every statistic is NaN.
    """
    return _pooled(_Runs.build(start, step, count), percentiles, expand_limit, candidate_limit)


#: ``chunks()`` -> an iterable of ``(start, step, count)`` array triples, the runs in
#: order; called once per pass, it must yield the same runs every time.
RunChunks = Callable[[], Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]]


def pooled_itl_stats_stream(
    chunks: RunChunks,
    percentiles: Sequence[float] = (50, 90, 95, 99),
    *,
    expand_limit: int = EXPAND_LIMIT,
    candidate_limit: int = CANDIDATE_LIMIT,
) -> PooledStats:
    """``pooled_itl_stats`` of runs read in chunks, several passes, bounded memory."""
    return _pooled(_StreamRuns(chunks), percentiles, expand_limit, candidate_limit)


def _pooled(runs, percentiles, expand_limit: int, candidate_limit: int) -> PooledStats:
    nan_pct = {float(p): math.nan for p in percentiles}
    if runs.total == 0:
        return PooledStats(0, math.nan, math.nan, nan_pct)
    if runs.total <= expand_limit:
        gaps = runs.expand_all()
        pct = np.percentile(gaps, list(percentiles)) if len(percentiles) else []
        return PooledStats(
            runs.total, float(np.mean(gaps)), float(np.std(gaps)),
            {float(p): float(v) for p, v in zip(percentiles, pct)},
        )
    mean, std = runs.mean_std()
    selector = _Selector(runs, candidate_limit)
    selector.prefetch(sorted({k for p in percentiles for k in _ranks(runs.total, float(p))}))
    return PooledStats(
        runs.total, mean, std,
        {float(p): selector.percentile(float(p)) for p in percentiles},
    )


def _ranks(n: int, p: float) -> list[int]:
    """The order statistics ``_Selector.percentile(p)`` reads."""
    vi = (n - 1) * np.true_divide(p, 100)
    if vi >= n - 1:
        return [n - 1]
    if vi < 0:
        return [0]
    prev = math.floor(vi)
    return [prev, prev + 1]


def order_statistics(
    start: np.ndarray, step: np.ndarray, count: np.ndarray, ranks: Sequence[int],
    *, candidate_limit: int = CANDIDATE_LIMIT,
) -> list[float]:
    """The ``ranks``-th smallest gaps (0-based) without expanding every run."""
    runs = _Runs.build(start, step, count)
    selector = _Selector(runs, candidate_limit)
    out = []
    for k in ranks:
        if not 0 <= k < runs.total:
            raise IndexError(f"rank {k} is outside 0..{runs.total - 1}")
        out.append(selector.select(int(k)))
    return out


# --- runs ---------------------------------------------------------------------


@dataclass(slots=True)
class _Runs:
    s: np.ndarray  # float64
    d: np.ndarray  # float64
    c: np.ndarray  # int64
    total: int
    rmin: np.ndarray  # each run's smallest and largest gap
    rmax: np.ndarray

    @classmethod
    def build(cls, start, step, count) -> _Runs:
        s = np.asarray(start, dtype=np.float64).ravel()
        d = np.asarray(step, dtype=np.float64).ravel()
        c = np.asarray(count, dtype=np.int64).ravel()
        if not (len(s) == len(d) == len(c)):
            raise ValueError(
                f"itl_start, itl_step and itl_count must have equal lengths, got "
                f"{len(s)}, {len(d)}, {len(c)}"
            )
        keep = (c > 0) & np.isfinite(s) & np.isfinite(d)
        if not keep.all():
            s, d, c = s[keep], d[keep], c[keep]
        # A single gap's step never matters; zero it so it joins the flat group.
        d = np.where(c == 1, 0.0, d)
        last = s + d * (c - 1).astype(np.float64)
        return cls(s, d, c, int(c.sum()), np.minimum(s, last), np.maximum(s, last))

    def terms(self, idx: np.ndarray, k: np.ndarray) -> np.ndarray:
        """Gap ``k`` of run ``idx``, computed exactly as ``expand_itl`` does."""
        return self.s[idx] + self.d[idx] * k.astype(np.float64)

    def expand(self, idx: np.ndarray, first: np.ndarray, stop: np.ndarray) -> np.ndarray:
        """Gaps with index ``first[i] <= k < stop[i]`` of the runs ``idx[i]``."""
        lens = stop - first
        keep = lens > 0
        idx, first, lens = idx[keep], first[keep], lens[keep]
        if len(idx) == 0:
            return np.zeros(0)
        pos = np.repeat(np.arange(len(idx)), lens)
        offsets = np.cumsum(lens) - lens
        k = first[pos] + (np.arange(int(lens.sum())) - offsets[pos])
        return self.terms(idx[pos], k)

    def expand_all(self) -> np.ndarray:
        return self.expand(np.arange(len(self.c)), np.zeros_like(self.c), self.c)

    def mean_std(self) -> tuple[float, float]:
        """Closed-form pooled mean and population std (numpy's ``ddof=0``).

        Summed over bounded slices of runs: the terms' temporaries would otherwise
        cost several times the runs themselves on a large unit.
        """
        total, sq_total = 0.0, 0.0
        for lo in range(0, len(self.c), _SUM_CHUNK):
            total += self.slice(lo, lo + _SUM_CHUNK).sum_terms()
        mean = total / self.total
        for lo in range(0, len(self.c), _SUM_CHUNK):
            sq_total += self.slice(lo, lo + _SUM_CHUNK).sum_squares(mean)
        var = sq_total / self.total
        return mean, math.sqrt(max(var, 0.0))

    def slice(self, lo: int, hi: int) -> _Runs:
        c = self.c[lo:hi]
        return _Runs(self.s[lo:hi], self.d[lo:hi], c, int(c.sum()), self.rmin[lo:hi], self.rmax[lo:hi])

    def sum_terms(self) -> float:
        c = self.c.astype(np.float64)
        return float(np.sum(c * self.s + self.d * (c * (c - 1) / 2)))

    def sum_squares(self, mean: float) -> float:
        c = self.c.astype(np.float64)
        d = self.d
        a = self.s - mean  # centre first: sums of squares of centred terms
        tri = c * (c - 1) / 2  # sum of k
        return float(np.sum(c * a * a + 2 * a * d * tri + d * d * (c - 1) * c * (2 * c - 1) / 6))

    def count(self, v: float) -> int:
        """How many gaps are <= ``v`` (``v`` may be infinite)."""
        if v == -math.inf:
            return 0
        if v == math.inf:
            return self.total
        return int(self.count_le(v).sum())

    def count_many(self, values: Sequence[float]) -> list[int]:
        return [self.count(v) for v in values]

    def gaps_between_many(self, brackets: Sequence[tuple[float, float]]) -> list[np.ndarray]:
        return [self.gaps_between(lo, hi) for lo, hi in brackets]

    def gaps_between(self, lo: float, hi: float) -> np.ndarray:
        """Every gap in ``(lo, hi]`` (bounds may be infinite)."""
        n_lo = np.zeros_like(self.c) if lo == -math.inf else self.count_le(lo)
        n_hi = self.c if hi == math.inf else self.count_le(hi)
        return self.between(n_lo, n_hi)

    def count_le(self, v: float) -> np.ndarray:
        """Per run, how many of its (float) gaps are <= ``v``."""
        n = np.where(self.rmax <= v, self.c, 0)
        # Only runs that straddle v need their formula (flat runs never do).
        straddle = np.flatnonzero((self.rmin <= v) & (self.rmax > v))
        if len(straddle):
            up = self.d[straddle] > 0
            asc, desc = straddle[up], straddle[~up]
            if len(asc):
                n[asc] = self._count_asc(asc, v)
            if len(desc):
                n[desc] = self.c[desc] - self._first_le_desc(desc, v)
        return n

    def _count_asc(self, idx: np.ndarray, v: float) -> np.ndarray:
        c = self.c[idx]
        with np.errstate(invalid="ignore", over="ignore"):
            est = np.floor((v - self.s[idx]) / self.d[idx]) + 1
        n = np.clip(np.nan_to_num(est, nan=0.0), 0, c).astype(np.int64)
        # The estimate is off by at most a rounding; walk to the exact count
        # (the float terms are monotone in k, so this converges).
        while True:
            up = n < c
            up[up] = self.terms(idx[up], n[up]) <= v
            down = n > 0
            down[down] = self.terms(idx[down], n[down] - 1) > v
            if not (up.any() or down.any()):
                return n
            n += up.astype(np.int64) - down.astype(np.int64)

    def _first_le_desc(self, idx: np.ndarray, v: float) -> np.ndarray:
        c = self.c[idx]
        with np.errstate(invalid="ignore", over="ignore"):
            est = np.ceil((v - self.s[idx]) / self.d[idx])
        f = np.clip(np.nan_to_num(est, nan=0.0), 0, c).astype(np.int64)
        while True:
            back = f > 0
            back[back] = self.terms(idx[back], f[back] - 1) <= v
            fwd = f < c
            fwd[fwd] = self.terms(idx[fwd], f[fwd]) > v
            if not (back.any() or fwd.any()):
                return f
            f += fwd.astype(np.int64) - back.astype(np.int64)

    def between(self, n_lo: np.ndarray, n_hi: np.ndarray) -> np.ndarray:
        """Every gap in ``(lo, hi]``, given each run's counts at lo and hi."""
        idx = np.flatnonzero(n_hi != n_lo)
        lo, hi, c = n_lo[idx], n_hi[idx], self.c[idx]
        desc = self.d[idx] < 0  # a falling run's smallest gaps are its last ones
        return self.expand(idx, np.where(desc, c - hi, lo), np.where(desc, c - lo, hi))

    def sample(self, size: int) -> np.ndarray:
        """A deterministic, evenly strided, sorted sample of the gaps."""
        size = min(size, self.total)
        j = ((np.arange(size) + 0.5) * (self.total / size)).astype(np.int64)
        j = np.minimum(j, self.total - 1)
        ends = np.cumsum(self.c)
        run = np.searchsorted(ends, j, side="right")
        k = j - (ends[run] - self.c[run])
        return np.sort(self.terms(run, k))


class _StreamRuns:
    """The ``_Runs`` operations the statistics need, one pass over chunked runs each.

    Chunks are filtered as ``_Runs.build`` filters and re-cut into slices of
    ``_SUM_CHUNK`` runs, the slices ``_Runs.mean_std`` sums over, so the sums
    are the same floats as on the whole arrays.
    """

    def __init__(self, chunks: RunChunks) -> None:
        self._chunks = chunks
        self.total = sum(r.total for r in self._slices())

    def _slices(self) -> Iterator[_Runs]:
        buf: list[_Runs] = []
        held = 0
        for start, step, count in self._chunks():
            r = _Runs.build(start, step, count)
            pos = 0
            n = len(r.c)
            while pos < n:
                take = min(n - pos, _SUM_CHUNK - held)
                buf.append(r.slice(pos, pos + take) if take < n else r)
                held += take
                pos += take
                if held == _SUM_CHUNK:
                    yield _concat(buf)
                    buf, held = [], 0
        if held:
            yield _concat(buf)

    def expand_all(self) -> np.ndarray:
        parts = [r.expand_all() for r in self._slices()]
        return np.concatenate(parts) if parts else np.zeros(0)

    def mean_std(self) -> tuple[float, float]:
        mean = sum(r.sum_terms() for r in self._slices()) / self.total
        var = sum(r.sum_squares(mean) for r in self._slices()) / self.total
        return mean, math.sqrt(max(var, 0.0))

    def sample(self, size: int) -> np.ndarray:
        """``_Runs.sample`` of the whole stream: the same strided gaps."""
        size = min(size, self.total)
        j = ((np.arange(size) + 0.5) * (self.total / size)).astype(np.int64)
        j = np.minimum(j, self.total - 1)
        parts, offset = [], 0
        for r in self._slices():
            lo, hi = np.searchsorted(j, [offset, offset + r.total])
            if hi > lo:
                ends = np.cumsum(r.c)
                local = j[lo:hi] - offset
                run = np.searchsorted(ends, local, side="right")
                parts.append(r.terms(run, local - (ends[run] - r.c[run])))
            offset += r.total
        return np.sort(np.concatenate(parts))

    def count(self, v: float) -> int:
        if v == -math.inf:
            return 0
        if v == math.inf:
            return self.total
        return sum(r.count(v) for r in self._slices())

    def gaps_between(self, lo: float, hi: float) -> np.ndarray:
        return self.gaps_between_many([(lo, hi)])[0]

    def count_many(self, values: Sequence[float]) -> list[int]:
        """``count`` of several values in one pass."""
        out = [0] * len(values)
        for r in self._slices():
            for j, v in enumerate(values):
                out[j] += r.count(v)
        return out

    def gaps_between_many(self, brackets: Sequence[tuple[float, float]]) -> list[np.ndarray]:
        """``gaps_between`` of several brackets in one pass."""
        parts: list[list[np.ndarray]] = [[] for _ in brackets]
        for r in self._slices():
            for j, (lo, hi) in enumerate(brackets):
                parts[j].append(r.gaps_between(lo, hi))
        return [np.concatenate(p) if p else np.zeros(0) for p in parts]


def _concat(parts: list[_Runs]) -> _Runs:
    if len(parts) == 1:
        return parts[0]
    c = np.concatenate([p.c for p in parts])
    return _Runs(np.concatenate([p.s for p in parts]), np.concatenate([p.d for p in parts]), c,
                 int(c.sum()), np.concatenate([p.rmin for p in parts]),
                 np.concatenate([p.rmax for p in parts]))


# --- selection ----------------------------------------------------------------


class _Selector:
    """Exact order statistics of the pooled gaps (see the module docstring)."""

    def __init__(self, runs: _Runs | _StreamRuns, candidate_limit: int) -> None:
        self.runs = runs
        self.limit = max(1, candidate_limit)
        self._sample: np.ndarray | None = None
        self._cache: dict[int, float] = {}

    def percentile(self, p: float) -> float:
        """``np.percentile(gaps, p)`` with numpy's 'linear' method, bit for bit."""
        n = self.runs.total
        q = np.true_divide(p, 100)
        vi = (n - 1) * q
        if vi >= n - 1:
            return self.select(n - 1)
        prev = math.floor(vi)
        if vi < 0:
            return self.select(0)
        a, b = self.select(prev), self.select(prev + 1)
        return float(_lerp(a, b, vi - prev))

    def select(self, k: int) -> float:
        if k not in self._cache:
            self._select(k)
        return self._cache[k]

    def _guess(self, k: int) -> tuple[float, float]:
        """A bracket around gap ``k`` from the sample (checked by counting)."""
        if self._sample is None:
            self._sample = self.runs.sample(_SAMPLE_SIZE)
        sample = self._sample
        m = len(sample)
        margin = int(3 * math.sqrt(m)) + 2  # the sample rank's sd is <= sqrt(m) / 2
        est = k * m / self.runs.total
        lo_i, hi_i = math.floor(est) - margin, math.ceil(est) + margin
        lo = float(sample[lo_i]) if lo_i >= 0 else -math.inf
        hi = float(sample[hi_i]) if hi_i < m else math.inf
        return lo, hi

    def _repair(self, k: int, lo: float, hi: float, n_lo: int, n_hi: int):
        """Widen a bracket the sample got wrong to the whole range."""
        if n_lo > k:
            lo, n_lo = -math.inf, 0
        if n_hi <= k:
            hi, n_hi = math.inf, self.runs.total
        return lo, hi, n_lo, n_hi

    def _take(self, k: int, cand: np.ndarray, n_lo: int) -> None:
        r = k - n_lo
        wanted = [r, r + 1] if r + 1 < len(cand) else [r]
        part = np.partition(cand, wanted)
        for w in wanted:
            self._cache[k + w - r] = float(part[w])

    def prefetch(self, ks: Sequence[int]) -> None:
        """``select`` several ranks together: each round counts every open bracket's
        midpoint in one pass and gathers every small enough bracket in another (a
        stream of runs is read once per pass, not once per rank and step)."""
        ks = [k for k in ks if k not in self._cache]
        if len(ks) < 2:
            return
        guesses = [self._guess(k) for k in ks]
        values = sorted({v for g in guesses for v in g})
        counted = dict(zip(values, self.runs.count_many(values)))
        open_ = [[k, *self._repair(k, lo, hi, counted[lo], counted[hi])]
                 for k, (lo, hi) in zip(ks, guesses)]
        while open_:
            ready = [b for b in open_ if b[4] - b[3] <= self.limit]
            if ready:
                gaps = self.runs.gaps_between_many([(b[1], b[2]) for b in ready])
                for b, cand in zip(ready, gaps):
                    self._take(b[0], cand, b[3])
            rest, mids = [], []
            for b in open_:
                if b[4] - b[3] <= self.limit:
                    continue
                mid = _mid_float(b[1], b[2])
                if mid is None:  # adjacent floats: every candidate is hi
                    self._cache[b[0]] = b[2]
                    continue
                rest.append(b)
                mids.append(mid)
            if rest:
                for b, mid, n_mid in zip(rest, mids, self.runs.count_many(mids)):
                    if n_mid > b[0]:
                        b[2], b[4] = mid, n_mid
                    else:
                        b[1], b[3] = mid, n_mid
            open_ = rest

    def _select(self, k: int) -> None:
        """Find gap ``k`` (and ``k + 1`` when it is in the same window) into the cache."""
        runs = self.runs
        lo, hi = self._guess(k)
        lo, hi, n_lo, n_hi = self._repair(k, lo, hi, *runs.count_many([lo, hi]))
        # Invariant: count(<= lo) <= k < count(<= hi), so lo < x_k <= hi.
        while True:
            inside = n_hi - n_lo
            if inside <= self.limit:
                self._take(k, runs.gaps_between(lo, hi), n_lo)
                return
            mid = _mid_float(lo, hi)
            if mid is None:  # lo and hi are adjacent floats: every candidate is hi
                self._cache[k] = hi
                return
            n_mid = runs.count(mid)
            if n_mid > k:
                hi, n_hi = mid, n_mid
            else:
                lo, n_lo = mid, n_mid


def _lerp(a: float, b: float, t: float) -> float:
    """numpy's ``_lerp`` (the 'linear' percentile method), same operation order."""
    a64, b64, t64 = np.float64(a), np.float64(b), np.float64(t)
    diff = b64 - a64
    if t64 >= 0.5:
        return b64 - diff * (1 - t64)
    return a64 + diff * t64


def _ordered(x: float) -> int:
    (bits,) = struct.unpack("<q", struct.pack("<d", x))
    return bits if bits >= 0 else -(bits & 0x7FFF_FFFF_FFFF_FFFF) - 1


def _unordered(i: int) -> float:
    bits = i if i >= 0 else (-(i + 1)) | -0x8000_0000_0000_0000
    return struct.unpack("<d", struct.pack("<q", bits))[0]


def _mid_float(lo: float, hi: float) -> float | None:
    """A float strictly between ``lo`` and ``hi`` (halving their bit-pattern distance)."""
    a, b = _ordered(lo), _ordered(hi)
    if b - a <= 1:
        return None
    return _unordered(a + (b - a) // 2)
