"""How steady is the host under this machine? Four probes a guest's own accounting misses.

    python -m calibrate.host_probe [--seconds 2] [--speed-seconds 20] [--json FILE]

``calibrate.quiet`` counts the CPU other processes use and the time the hypervisor
says it stole. On some virtual machines that is not the whole story (measured on a
2-core Firecracker VM, 2026-12-03, docs/calibration.md section 1):

- **Hidden stalls.** The vCPU stops for tens of microseconds to milliseconds while
  the guest reports no steal. A loop that only reads the clock sees them as gaps:
  ``stalls`` reports the share of time lost in gaps longer than ``STALL_GAP_US``.
  A tail latency measured in microseconds (a routing decision's p99) is the host's
  when that share is a few percent.
- **First touch of fresh memory.** Memory the guest freed may be handed back to the
  host, and the next process to use it pays the host's page fault (12.6 us per
  4 KiB page there, against 0.8 us for a page touched before): a benchmark that
  grows its heap after another job freed gigabytes measures the host's faults.
- **Cross-core interference.** Whether work on one core slows memory-bound work on
  another (shared caches, memory bandwidth, or two vCPUs on one physical core).
  There, a memory copy on core 0 took 1.41x as long while core 1 ran a busy loop, so
  two vLLM servers on the two cores slow each other, and profiles fitted with each
  server alone do not describe them side by side (docs/validation.md).

- **Speed wander.** Whether each core's compute speed holds from second to second.
  There (2026-12-04, AMD EPYC VM) a fixed matmul loop's time per second varied by
  10-12% (coefficient of variation), with slow spells of 1.4-1.7x lasting seconds,
  correlated only 0.2-0.5 between the two vCPUs: a latency measured in one minute
  and its twin measured in the next differ by that much with no model involved. ``calibrate check
  --speed-trace`` replays its loads under the measured trace to show how far such a
  wander moves each statistic (``sim.speed``).

Each of the first three probes takes a second or two and uses one core (the
interference probe both); the speed probe runs on every core at once for
``--speed-seconds`` (20 s by default).
"""
from __future__ import annotations

import argparse
import json
import math
import mmap
import multiprocessing
import os
import sys
import time
from pathlib import Path

import numpy as np

from calibrate.machine import loadavg
from sim.speed import SpeedWander, SpeedWanderError

#: A clock-loop gap longer than this is a stall (a timer interrupt costs a few us).
STALL_GAP_US = 20.0
#: Share of time lost to stalls above which the host is called unsteady for tail latencies.
UNSTEADY_STALL_SHARE = 0.01
#: Slowdown of a memory copy by a busy neighbour core above which the cores interfere.
INTERFERING_RATIO = 1.15
#: Coefficient of variation of a core's speed per window above which it wanders.
WANDERING_CV = 0.03
#: The speed probe's fixed work: a square float64 matmul of this size (about 1 ms on one core).
SPEED_MATRIX = 160
PAGE = mmap.PAGESIZE


def clock_gaps(seconds: float, gap_us: float = STALL_GAP_US, clock=time.perf_counter_ns) -> list[int]:
    """Gaps (ns) longer than ``gap_us`` between consecutive reads of ``clock`` over ``seconds``."""
    gap_ns = int(gap_us * 1000)
    last = clock()
    end = last + int(seconds * 1e9)
    gaps = []
    while last < end:
        now = clock()
        if now - last > gap_ns:
            gaps.append(now - last)
        last = now
    return gaps


def stall_summary(gaps_ns: list[int], seconds: float) -> dict:
    """Share of ``seconds`` lost in the gaps, their number per second, median and longest (us)."""
    lost = sum(gaps_ns) / 1e9
    return {"seconds": seconds, "stalls": len(gaps_ns),
            "stall_share": round(lost / seconds, 5) if seconds > 0 else float("nan"),
            "stalls_per_s": round(len(gaps_ns) / seconds, 1) if seconds > 0 else float("nan"),
            "median_us": round(float(np.median(gaps_ns)) / 1000, 1) if gaps_ns else 0.0,
            "max_us": round(max(gaps_ns) / 1000, 1) if gaps_ns else 0.0}


def stalls(seconds: float = 1.0, cores: list[int] | None = None) -> dict:
    """``stall_summary`` of a clock loop on each core in turn (``seconds`` split between them).

    The summary is the worst core's (``worst_core``, over its share of the time);
    ``per_core`` has each, ``total_seconds`` the probe's length.
    """
    cores = sorted(os.sched_getaffinity(0)) if cores is None and hasattr(os, "sched_getaffinity") else cores
    if not cores or not hasattr(os, "sched_setaffinity"):
        return {**stall_summary(clock_gaps(seconds), seconds), "total_seconds": seconds, "per_core": {}}
    allowed = os.sched_getaffinity(0)
    per_core = {}
    try:
        for c in cores:
            os.sched_setaffinity(0, {c})
            per_core[c] = stall_summary(clock_gaps(seconds / len(cores)), seconds / len(cores))
    finally:
        os.sched_setaffinity(0, allowed)
    worst = max(per_core, key=lambda c: per_core[c]["stall_share"])
    return {**per_core[worst], "worst_core": worst, "total_seconds": seconds, "per_core": per_core}


def is_unsteady(stall_share: float) -> bool:
    """Whether tail latencies measured while the host lost this share of time are the host's."""
    return stall_share > UNSTEADY_STALL_SHARE


def stall_verdict(before: dict, after: dict) -> tuple[bool, str]:
    """Whether tail latencies measured between two ``stalls`` probes are the host's,
    and a line that says so with both readings."""
    shares = [before["stall_share"], after["stall_share"]]
    unsteady = is_unsteady(max(shares))
    note = "UNSTEADY HOST: microsecond tails measured meanwhile are the host's" if unsteady else "steady"
    return unsteady, (f"hidden vCPU stalls (calibrate.host_probe): {shares[0] * 100:.2f}% of the time "
                      f"before, {shares[1] * 100:.2f}% after: {note}")


class StallWindow:
    """Stall probes of ``seconds`` each around a measurement (none when ``seconds`` is 0).

    ``with StallWindow(1.0) as window: ...`` probes before the block and after it,
    exceptions included; then ``before``/``after`` hold the readings (None when
    skipped), ``unsteady`` and ``line`` the verdict (``stall_verdict``; False and
    "" when skipped).
    """

    def __init__(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"a stall probe lasts >= 0 s, got {seconds}")
        self.seconds = seconds
        self.before: dict | None = None
        self.after: dict | None = None
        self.unsteady = False
        self.line = ""

    def __enter__(self) -> "StallWindow":
        if self.seconds:
            self.before = stalls(self.seconds)
        return self

    def __exit__(self, *exc) -> None:
        if self.before is not None:
            self.after = stalls(self.seconds)
            self.unsteady, self.line = stall_verdict(self.before, self.after)


def first_touch(mib: int = 256) -> dict:
    """Microseconds per page to write one byte into each page of fresh anonymous memory,
    and again into the same pages (then only the guest's own page tables are involved)."""
    size = mib * 2**20
    region = mmap.mmap(-1, size)
    try:
        pages = np.frombuffer(region, dtype=np.uint8)[::PAGE]  # one byte of every page, no copy
        n = len(pages)
        t = time.perf_counter()
        pages[:] = 1
        first = time.perf_counter() - t
        t = time.perf_counter()
        pages[:] = 2
        again = time.perf_counter() - t
        del pages
    finally:
        region.close()
    return {"mib": mib, "page_bytes": PAGE, "first_us_per_page": round(first / n * 1e6, 3),
            "again_us_per_page": round(again / n * 1e6, 3)}


def copy_seconds(mib: int, repeats: int) -> float:
    """Best time of ``repeats`` copies of ``mib`` MiB (memory-bound work)."""
    src = np.ones(mib * 2**20 // 8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return best


def _busy(core: int, stop) -> None:
    """A neighbour's load: a Python loop on ``core`` until ``stop`` is set."""
    os.sched_setaffinity(0, {core})
    x = 0
    while not stop.is_set():
        for i in range(10000):
            x ^= i


def interference(core: int | None = None, neighbour: int | None = None, mib: int = 64,
                 repeats: int = 8) -> dict:
    """How much longer a memory copy on ``core`` takes while ``neighbour`` runs a busy loop.

    Needs two cores this process may use; otherwise returns ``{"skipped": reason}``.
    """
    if not hasattr(os, "sched_setaffinity"):
        return {"skipped": "this platform cannot pin processes to cores"}
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return {"skipped": f"needs two cores, this process may use {len(allowed)}"}
    core = allowed[0] if core is None else core
    neighbour = next(c for c in allowed if c != core) if neighbour is None else neighbour
    if core == neighbour or core not in allowed or neighbour not in allowed:
        raise ValueError(f"core and neighbour must be two different cores of {allowed}; "
                         f"got {core} and {neighbour}")
    saved = os.sched_getaffinity(0)
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    try:
        os.sched_setaffinity(0, {core})
        alone = copy_seconds(mib, repeats)
        proc = ctx.Process(target=_busy, args=(neighbour, stop), daemon=True)
        proc.start()
        try:
            time.sleep(0.3)  # the neighbour is running
            loaded = copy_seconds(mib, repeats)
        finally:
            stop.set()
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
        again = copy_seconds(mib, repeats)  # alone again: the host may have changed meanwhile
    finally:
        os.sched_setaffinity(0, saved)
    alone = min(alone, again)
    return {"core": core, "neighbour": neighbour, "mib": mib, "alone_s": round(alone, 5),
            "with_busy_neighbour_s": round(loaded, 5), "ratio": round(loaded / alone, 3)}


def _speed_worker(core: int, start_at: float, windows: int, window_s: float, queue) -> None:
    """Fixed matmuls on ``core``: how many finished in each window from ``start_at`` on."""
    os.sched_setaffinity(0, {core})
    a = np.random.default_rng(core).random((SPEED_MATRIX, SPEED_MATRIX))
    while time.time() < start_at:
        a @ a
    rates = []
    t0 = time.perf_counter()
    for w in range(1, windows + 1):
        n = 0
        end = t0 + w * window_s
        while time.perf_counter() < end:
            a @ a
            n += 1
        rates.append(n / window_s)
    queue.put((core, rates))


def speed_trace(seconds: float = 20.0, window_s: float = 1.0, cores: list[int] | None = None) -> dict:
    """Each core's rate of a fixed matmul per window, all cores at once (so their wanders can be compared).

    Returns ``{"window_s", "seconds", "per_core": {core: rates per second}}``, or
    ``{"skipped": reason}`` where processes cannot be pinned. Runs one process per
    core, each with one BLAS thread.
    """
    if not hasattr(os, "sched_setaffinity"):
        return {"skipped": "this platform cannot pin processes to cores"}
    if not (seconds > 0 and window_s > 0 and window_s <= seconds):
        raise ValueError(f"need 0 < window_s <= seconds, got window_s={window_s}, seconds={seconds}")
    cores = sorted(os.sched_getaffinity(0)) if cores is None else list(cores)
    windows = int(seconds // window_s)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    threads = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update({k: "1" for k in threads})  # the children's BLAS: one thread each
    try:
        start_at = time.time() + 1.0 + 0.2 * len(cores)  # every child started and warm
        procs = [ctx.Process(target=_speed_worker, args=(c, start_at, windows, window_s, queue), daemon=True)
                 for c in cores]
        for p in procs:
            p.start()
    finally:
        for k, v in threads.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        per_core = dict(queue.get(timeout=seconds + 60) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
    return {"window_s": window_s, "seconds": windows * window_s,
            "per_core": {c: per_core[c] for c in sorted(per_core)}}


def speed_summary(trace: dict) -> dict:
    """Per core: the wander of its speed (``sim.speed.SpeedWander`` factors: cv, slowest, fastest);
    and the correlation of the first two cores' rates (near 1: the whole machine slows at once)."""
    if "skipped" in trace:
        return dict(trace)
    out: dict = {"window_s": trace["window_s"], "per_core": {}}
    for core, rates in trace["per_core"].items():
        idle = sum(1 for r in rates if not r > 0)
        if idle:  # a window with no matmul done: the core stopped for a whole window; no cv describes it
            out["per_core"][core] = {"stalled_windows": idle, "windows": len(rates)}
            continue
        w = SpeedWander.from_rates(rates, trace["window_s"])
        out["per_core"][core] = {"cv": round(w.cv, 4), "slowest": round(max(w.factors), 3),
                                 "fastest": round(min(w.factors), 3), "windows": len(rates)}
    cores = list(trace["per_core"])
    if len(cores) >= 2:
        x, y = (np.asarray(trace["per_core"][c], float) for c in cores[:2])
        n = min(len(x), len(y))
        ok = n >= 3 and x[:n].std() > 0 and y[:n].std() > 0
        out["correlation"] = round(float(np.corrcoef(x[:n], y[:n])[0, 1]), 3) if ok else None
    return out


def wander_from_report(report: dict, core: int | None = None) -> SpeedWander:
    """The speed wander one core showed in a ``host_probe --json`` report (default: its first core)."""
    trace = report.get("speed")
    if not trace or "per_core" not in trace:
        raise ValueError("the host probe report has no speed trace (run python -m calibrate.host_probe "
                         "--speed-seconds 20 --json FILE with nothing else running)")
    per_core = {int(c): r for c, r in trace["per_core"].items()}
    core = min(per_core) if core is None else core
    if core not in per_core:
        raise ValueError(f"the speed trace has no core {core}; it has cores {sorted(per_core)}")
    return SpeedWander.from_rates(per_core[core], float(trace["window_s"]))


def wander_unless_stalled(report: dict, core: int | None = None) -> SpeedWander | None:
    """``wander_from_report``, or None where a window did no work at all: the core stalled for a
    whole window, which no slowdown factor describes."""
    try:
        return wander_from_report(report, core)
    except SpeedWanderError:
        return None


def mean_rate(report: dict, core: int | None = None) -> float:
    """One core's mean matmul rate in a report's speed trace (default: its first core; NaN
    without a trace or that core). Two reports of one machine compare its speed at two times."""
    per_core = {int(c): r for c, r in ((report.get("speed") or {}).get("per_core") or {}).items()}
    rates = per_core.get(min(per_core) if core is None and per_core else core) or []
    return float(np.mean(rates)) if rates else math.nan


def describe(report: dict) -> list[str]:
    """The report as lines a person reads, each with what it means for measurements."""
    lines = []
    s = report.get("stalls")
    if s is not None:
        verdict = ("unsteady: microsecond tails measured now are the host's"
                   if is_unsteady(s["stall_share"]) else "steady")
        several = s.get("per_core") and len(s["per_core"]) > 1
        where = f" on core {s['worst_core']}" if several else ""
        worst = f"the worst of {len(s['per_core'])} cores; " if several else ""
        lines.append(f"hidden stalls: {s['stall_share'] * 100:.2f}% of the time lost in {s['stalls']} gaps "
                     f"> {STALL_GAP_US:.0f} us over {s['seconds']:.1f} s{where} ({worst}median "
                     f"{s['median_us']:.0f} us, longest {s['max_us']:.0f} us): {verdict}")
    f = report.get("first_touch")
    if f is not None:
        lines.append(f"first touch of fresh memory: {f['first_us_per_page']:.2f} us per "
                     f"{f['page_bytes'] // 1024} KiB page (touched again: {f['again_us_per_page']:.2f} us)")
    i = report.get("interference")
    if i is not None:
        if "skipped" in i:
            lines.append(f"cross-core interference: not measured ({i['skipped']})")
        else:
            verdict = ("the cores interfere: servers on them slow each other; profile them side by side"
                       if i["ratio"] > INTERFERING_RATIO else "no interference that matters")
            lines.append(f"cross-core interference: a {i['mib']} MiB copy on core {i['core']} takes "
                         f"{i['ratio']:.2f}x as long while core {i['neighbour']} runs a busy loop: {verdict}")
    sp = report.get("speed")
    if sp is not None:
        if "skipped" in sp:
            lines.append(f"speed wander: not measured ({sp['skipped']})")
        else:
            summary = speed_summary(sp)
            for core, c in summary["per_core"].items():
                if "stalled_windows" in c:
                    lines.append(f"speed wander on core {core}: {c['stalled_windows']} of {c['windows']} "
                                 f"{sp['window_s']:g}-s windows did no matmul at all: the core stalled for whole "
                                 "windows, and measurements now are the host's")
                    continue
                verdict = ("wanders: identical measurements minutes apart differ by this much"
                           if c["cv"] > WANDERING_CV else "steady")
                lines.append(f"speed wander on core {core}: a fixed matmul's time per {sp['window_s']:g} s window "
                             f"varies by {c['cv'] * 100:.1f}% (cv over {c['windows']} windows; slowest "
                             f"{c['slowest']:.2f}x, fastest {c['fastest']:.2f}x the mean): {verdict}")
            if summary.get("correlation") is not None:
                lines.append(f"speed wander across cores: correlation {summary['correlation']:.2f} "
                             f"(near 1: the whole machine slows at once; near 0: each core on its own)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m calibrate.host_probe",
        description="Measure what a VM's own accounting misses: hidden vCPU stalls, the cost of "
                    "touching fresh memory, whether one core's work slows another's, and how much "
                    "each core's speed wanders over time (--json keeps the trace for calibrate check "
                    "--speed-trace). Run it "
                    "before measuring on a machine you do not know (nothing else running).")
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="length of the stall probe, split over the cores (default 2)")
    parser.add_argument("--first-touch-mib", type=int, default=256,
                        help="fresh memory the first-touch probe writes (default 256 MiB; 0 skips it)")
    parser.add_argument("--no-interference", action="store_true",
                        help="skip the cross-core probe (it keeps both cores busy for a few seconds)")
    parser.add_argument("--speed-seconds", type=float, default=20.0,
                        help="length of the speed-wander probe, on every core at once (default 20; 0 skips it)")
    parser.add_argument("--speed-window", type=float, default=1.0,
                        help="window of the speed-wander probe in seconds (default 1)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.speed_seconds < 0:
        parser.error(f"--speed-seconds must be >= 0, got {args.speed_seconds}")
    if args.speed_seconds and not 0 < args.speed_window <= args.speed_seconds:
        parser.error(f"--speed-window must be > 0 and at most --speed-seconds, got {args.speed_window}")
    if not args.seconds > 0:
        parser.error(f"--seconds must be > 0, got {args.seconds}")
    if args.first_touch_mib < 0:
        parser.error(f"--first-touch-mib must be >= 0, got {args.first_touch_mib}")
    report = {"stalls": stalls(args.seconds)}
    if args.first_touch_mib:
        report["first_touch"] = first_touch(args.first_touch_mib)
    if not args.no_interference:
        report["interference"] = interference()
    if args.speed_seconds:
        report["speed"] = speed_trace(args.speed_seconds, args.speed_window)
    report["loadavg"] = loadavg()
    for line in describe(report):
        print(line)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
