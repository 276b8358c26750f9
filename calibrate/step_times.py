"""Every engine step of a check, timed from its tokens and set against the latency model.

A check's error says *that* the simulator is off under load, not *where*. A
streaming client sees each token as it arrives, and the tokens one engine step
produces reach it together: clustering every request's token arrivals gives the
real steps' end times, so each busy step's real duration. What a step held (new
tokens, sequences, prefill attention work, decode context) the client cannot
see; it is recovered by replaying vLLM's scheduler (``sim.engine``, step for step
the same as vLLM's own: ``tests/sim/engine_vs_vllm.py``) on the *real* timeline:
before each real step, the requests that had reached the engine by the end of the
one before are added, and one step is planned and applied. The step is *matched*
when it gives exactly the tokens the client saw in that cluster (the same requests,
each its same token); only matched steps are compared.

Each matched busy step then has ``ratio`` = real duration / the model's
``step_time`` for that composition. A ratio the same for every kind, batch size
and context says the machine ran at another speed than when it was profiled; a
ratio that moves with one of them points at the term of the model that is off.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from calibrate.replay import StepRecorder, engine_config, prepare_units
from sim.engine import Engine
from sim.latency import LatencyProfile
from sim.request import EngineRequest

#: File in a check's folder with each request's token arrival times.
TOKEN_TIMES_FILE = "token_times.json"
#: File in a check's folder with one row per real engine step.
STEPS_FILE = "steps.csv"
#: Tokens further apart than this share of the model's shortest step belong to different steps.
GAP_SHARE = 0.25
#: Batch-size and per-sequence-context bins of the summary.
SEQ_BINS = (0, 1, 2, 4, 8, 16, 32, 64, 1 << 30)
CONTEXT_BINS = (0, 128, 256, 512, 1024, 2048, 1 << 30)


class StepTimesError(ValueError):
    """Token times that cannot be read or do not fit the measured requests."""


def write_token_times(path: str | Path, times: dict[int, list[float]]) -> None:
    """``times``: request id -> its token arrival times, in seconds on the clock of the rows'
    ``unit_start_s + send_s`` (rounded to the microsecond)."""
    payload = {"clock": "seconds since the check started (unit_start_s + send_s of check_requests.csv)",
               "requests": {str(k): [round(float(t), 6) for t in v] for k, v in sorted(times.items())}}
    Path(path).write_text(json.dumps(payload) + "\n")


def read_token_times(path: str | Path) -> dict[int, list[float]]:
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
        raw = payload["requests"]
        times = {int(k): [float(t) for t in v] for k, v in raw.items()}
    except FileNotFoundError:
        raise StepTimesError(f"token times {path} do not exist (a check's {TOKEN_TIMES_FILE})") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise StepTimesError(f"token times {path} are not a {TOKEN_TIMES_FILE} of a check "
                             f"({{'requests': {{id: [seconds, ...]}}}}): {e}") from None
    for rid, ts in times.items():
        if any(not math.isfinite(t) for t in ts) or any(b < a for a, b in zip(ts, ts[1:])):
            raise StepTimesError(f"token times {path}: request {rid}'s times are not finite and non-decreasing")
    return times


def cluster_steps(times: dict[int, list[float]], gap_s: float) -> list[tuple[float, list[tuple[int, int]]]]:
    """Token arrivals -> real steps, in order: (first arrival, [(request id, token index), ...]).

    Arrivals closer than ``gap_s`` to the one before belong to the same step. A cluster
    whose requests are none of the cluster's before, and which holds a request's next
    token although its previous one came earlier still, is the rest of that step,
    delivered after a pause (a running request gets a token in every step), and joins it.
    """
    if not gap_s > 0:
        raise StepTimesError(f"the gap between steps must be > 0 s, got {gap_s!r}")
    events = sorted((t, rid, k) for rid, ts in times.items() for k, t in enumerate(ts))
    steps: list[tuple[float, list[tuple[int, int]]]] = []
    last = -math.inf
    for t, rid, k in events:
        if t - last > gap_s:
            steps.append((t, []))
        steps[-1][1].append((rid, k))
        last = t
    joined: list[tuple[float, list[tuple[int, int]]]] = []
    where: dict[tuple[int, int], int] = {}  # (request, token) -> its step in ``joined``
    for t, toks in steps:
        if joined:
            prev = joined[-1][1]
            before = {r for r, _ in prev}
            rest = all(r not in before for r, _ in toks) and any(
                j > 0 and where.get((r, j - 1), len(joined)) < len(joined) - 1 for r, j in toks)
            if rest:
                prev.extend(toks)
                for tok in toks:
                    where[tok] = len(joined) - 1
                continue
        joined.append((t, list(toks)))
        for tok in toks:
            where[tok] = len(joined) - 1
    return joined


def default_gap_s(profile: LatencyProfile) -> float:
    """``GAP_SHARE`` of the model's shortest step (one sequence decoding alone)."""
    return GAP_SHARE * profile.model.step_time(1, 1, 0.0, 1)


def engine_arrivals(profile: LatencyProfile, sent_s: np.ndarray, input_len: np.ndarray) -> np.ndarray:
    """When each request reaches the engine, as the simulator models it: half the request
    overhead after its send, then the front end's input job, one job at a time in send order."""
    fe = profile.front_end
    order = np.argsort(sent_s, kind="stable")
    reach = np.empty(len(sent_s))
    free = -math.inf
    for i in order:
        start = max(sent_s[i] + profile.request_overhead_s / 2.0, free)
        free = reach[i] = start + fe.input_s + fe.input_token_s * float(input_len[i])
    return reach


def _output_delay(profile: LatencyProfile) -> float:
    """From a step's end to its first token at the client, as the simulator has it."""
    return profile.request_overhead_s / 2.0 + profile.front_end.output_step_s


#: How far (s) a request's first token time may lie from its send time plus its measured TTFT.
TTFT_TOLERANCE_S = 1e-3


def _check_times_fit(rows: pd.DataFrame, times: dict[int, list[float]]) -> dict[int, tuple[int, int]]:
    """Token times are those of these requests: no more than each received, the first one TTFT
    after its send (another check's file has the same request ids). Fewer are allowed: one SSE
    chunk carries several tokens when vLLM's API server read the request's outputs late (its
    ``RequestOutputCollector`` merges them), and the client times chunks, not tokens. Returns
    those requests: id -> (chunks, tokens)."""
    merged = {}
    for r in rows.itertuples(index=False):
        ts = times[int(r.request_id)]
        if len(ts) < int(r.output_len):
            merged[int(r.request_id)] = (len(ts), int(r.output_len))
        if not 0 < len(ts) <= int(r.output_len):
            raise StepTimesError(f"the token times do not belong to these requests: request {r.request_id} "
                                 f"received {int(r.output_len)} tokens but has {len(ts)} token times")
        ttft = getattr(r, "ttft_s", math.nan)
        if math.isfinite(ttft) and abs(ts[0] - (r.unit_start_s + r.send_s) - ttft) > TTFT_TOLERANCE_S:
            raise StepTimesError(f"the token times do not belong to these requests: request {r.request_id}'s "
                                 f"first token time is {ts[0] - (r.unit_start_s + r.send_s):.4f} s after its send, "
                                 f"its measured TTFT {ttft:.4f} s")
    return merged


#: Replays of a load at most: each after the first admits the requests the one before
#: prefilled earlier than vLLM did just before the step their real first token came in.
MAX_PASSES = 3


def replay_steps(profile: LatencyProfile, measured: pd.DataFrame, times: dict[int, list[float]],
                 gap_s: float | None = None) -> pd.DataFrame:
    """One row per real engine step of each load in ``measured`` (its ok rows with token times).

    Columns: ``load``, ``step``, ``end_s`` (first token arrival of the step), ``duration_s``
    (since the step before; NaN after an idle engine), ``kind`` (``decode``: no prefill
    work; ``prefill``: some), ``tokens``, ``seqs``, ``prefill_work``, ``decode_context``,
    ``predicted_s``, ``ratio`` and ``matched``. A load with a request whose chunks carried
    several tokens is left out, and named with why in ``frame.attrs["skipped_loads"]``.
    """
    gap = default_gap_s(profile) if gap_s is None else gap_s
    ok = measured[measured["ok"].astype(str).str.lower().isin(("true", "1"))]
    if "phase" in ok:
        ok = ok[ok["phase"] != "reference"]
    ok = ok[ok["request_id"].isin(list(times))].reset_index(drop=True)
    merged = _check_times_fit(ok, times)
    if ok.empty:
        return _empty_steps()
    parts = []
    skipped: dict[str, str] = {}
    for load, g in ok.groupby("load", sort=False):
        g = g.reset_index(drop=True)
        short = [int(r) for r in g["request_id"] if int(r) in merged]
        if short:
            # The client cannot tell which chunk carried two tokens, so from there on that
            # request's tokens cannot be placed in steps, nor the load's steps told apart.
            got, n = merged[short[0]]
            skipped[str(load)] = (f"{len(short)} request(s) had chunks of several tokens (request {short[0]}: "
                                  f"{got} chunks for {n} tokens)")
            continue
        (unit,) = prepare_units(g.assign(unit=str(load)), profile.engine.block_size)
        rid = g["request_id"].to_numpy()[unit.rows]
        sent = (g["unit_start_s"] + g["send_s"]).to_numpy(float)[unit.rows]
        steps = cluster_steps({int(r): times[int(r)] for r in rid}, gap)
        index = {int(r): i for i, r in enumerate(rid)}
        # Where each request's first token came: its cluster, and how many of its tokens that
        # cluster holds (in a cluster of several steps, a request with fewer tokens than the
        # others began in a later one of them).
        real_first = np.full(len(rid), -1)
        real_tokens = np.zeros(len(rid), dtype=int)
        for k, (_, toks) in enumerate(steps):
            for r, j in toks:
                if j == 0:
                    real_first[index[r]] = k
            for r, c in Counter(r for r, _ in toks).items():
                if real_first[index[r]] == k:
                    real_tokens[index[r]] = c
        reach = engine_arrivals(profile, sent, unit.trace.input_len)
        hold: dict[int, tuple[int, int]] = {}
        best = None
        for _ in range(MAX_PASSES):
            frame, first, replayed = _replay_load(profile, str(load), unit.trace, reach, hold, steps, index)
            if best is None or frame["matched"].sum() > best["matched"].sum():
                best = frame
            early = {}
            for i in np.flatnonzero((first[:, 0] >= 0) & (real_first >= 0)):
                k = int(real_first[i])
                due = (k, max(0, int(replayed[k]) - int(real_tokens[i])))
                if tuple(first[i]) < due:
                    early[int(i)] = due
            if not early:
                break
            hold = {**hold, **early}
        parts.append(best)
    frame = pd.concat(parts, ignore_index=True) if parts else _empty_steps()
    frame["ratio"] = frame["duration_s"] / frame["predicted_s"]
    frame.attrs["skipped_loads"] = skipped
    return frame


def _empty_steps() -> pd.DataFrame:
    return pd.DataFrame(columns=["load", "step", "end_s", "duration_s", "kind", "tokens", "seqs",
                                 "prefill_work", "decode_context", "predicted_s", "ratio", "matched"])


def steps_to_replay(real: set[tuple[int, int]], given: dict[int, int]) -> int:
    """How many engine steps a cluster of real tokens stands for, given the tokens the replay
    has produced so far (``given``: request -> count).

    Each request in the cluster asks for as many steps as bring the replay to its latest
    token there; the answer is the count most of them ask for (the larger on a tie). A
    request whose token of the step before came only now (the client read its stream late)
    asks for none more, one with two tokens here asks for two, and one the replay lags or
    leads on (a prefill a step apart) is outvoted, so one late or merged delivery does not
    leave the replay a step off for every request after it. At least one step, unless every
    request's tokens are ones the replay has already produced.
    """
    latest: dict[int, int] = {}
    for i, j in real:
        latest[i] = max(latest.get(i, -1), j)
    asks = Counter(max(0, j + 1 - given.get(i, 0)) for i, j in latest.items())
    if not asks:
        return 1
    count, _ = max(asks.items(), key=lambda kv: (kv[1], kv[0]))
    return count


def _replay_load(profile: LatencyProfile, load: str, trace, reach: np.ndarray, hold: dict[int, tuple[int, int]],
                 steps: list[tuple[float, list[tuple[int, int]]]], index: dict[int, int]
                 ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """One pass of ``replay_steps`` over one load.

    Requests reach the engine at ``reach``, except those in ``hold`` (request -> (cluster,
    step within it)), which a pass before prefilled earlier than vLLM did and which are
    added just before that step. Returns the rows, where the replay gave each request its
    first token ((cluster, step within it); (-1, -1): never) and how many steps it
    replayed for each cluster.
    """
    out_delay = _output_delay(profile)
    rec = StepRecorder(profile.model)
    eng = Engine(engine_config(profile.engine), rec)
    shareable = trace.shareable_blocks().tolist()
    n = len(trace)
    by_reach = [int(i) for i in np.argsort(reach, kind="stable") if int(i) not in hold]
    held_in: dict[int, list[tuple[int, int]]] = {}
    for i, (k, u) in sorted(hold.items(), key=lambda kv: kv[1]):
        held_in.setdefault(k, []).append((u, i))
    admitted = np.zeros(n, dtype=bool)
    first = np.full((n, 2), -1)
    replayed = np.zeros(len(steps), dtype=int)
    given: dict[int, int] = {}  # tokens the replay has given each request so far
    nxt = 0
    prev_end = None
    rows: list[dict] = []

    def add(i: int) -> None:
        eng.add_request(EngineRequest(i, int(trace.input_len[i]), int(trace.output_len[i]), trace.hashes(i),
                                      arrival=float(reach[i]), num_shareable=shareable[i]))
        admitted[i] = True

    def admit(until: float) -> None:
        nonlocal nxt
        while nxt < len(by_reach) and reach[by_reach[nxt]] <= until:
            add(by_reach[nxt])
            nxt += 1

    def admit_held(k: int, upto: float) -> None:
        due = held_in.get(k, [])
        while due and due[0][0] <= upto:
            add(due.pop(0)[1])

    for k, (seen, toks) in enumerate(steps):
        end = seen - out_delay
        real = {(index[r], j) for r, j in toks if r in index}
        # A request with a token in this step had reached the engine before it, whatever the
        # estimate of its arrival says (the front end's input cost is a fitted mean).
        late = [reach[i] for i, _ in real if not admitted[i] and i not in hold]
        busy = prev_end is not None and eng.has_work
        if busy or late:
            admit(max([prev_end if prev_end is not None else -math.inf, *late]))
        admit_held(k, 0)
        if not eng.has_work:
            busy = False
            if nxt < len(by_reach) and not held_in.get(k):  # an idle engine starts with the next request to reach it
                admit(reach[by_reach[nxt]])
        # Several tokens of one request together: the front end or the client stalled and
        # delivered that many steps at once. They are replayed, but their durations are unknown.
        merged = steps_to_replay(real, given)
        emitted: set[tuple[int, int]] = set()
        first_row = len(rows)
        for u in range(merged):
            admit_held(k, u if u < merged - 1 else math.inf)
            plan = eng.plan(1)
            if plan is None:
                break
            replayed[k] += 1
            # (The engine's clock only stamps its own token times, which are not read here.)
            out = eng.complete(plan, 1, prev_end if busy else end)
            tokens, seqs, work, ctx = rec.last
            for r in out.first_tokens:
                first[r.id] = (k, u)
            emitted |= {(r.id, r.num_output - 1) for r in out.emitted}
            given.update((r.id, r.num_output) for r in out.emitted)
            rows.append(dict(load=load, step=k, end_s=seen,
                             duration_s=(end - prev_end) if busy and merged == 1 else math.nan,
                             kind="prefill" if work > 0 else "decode", tokens=int(tokens), seqs=int(seqs),
                             prefill_work=float(work), decode_context=int(ctx),
                             predicted_s=profile.model.step_time(tokens, seqs, work, ctx), matched=False))
        admit_held(k, math.inf)
        if len(rows) == first_row:
            rows.append(dict(load=load, step=k, end_s=seen, duration_s=math.nan, kind="", tokens=0, seqs=0,
                             prefill_work=0.0, decode_context=0, predicted_s=math.nan, matched=False))
        # Matched: the same requests got a token, and each its same token (a prefill one step
        # late in the replay gives the same requests a token, but not the same ones).
        for row in rows[first_row:]:
            row["matched"] = emitted == real
        prev_end = end
    return pd.DataFrame(rows), first, replayed


def _bin_label(lo: int, hi: int) -> str:
    return f"{lo + 1}-{hi}" if hi < 1 << 30 else f">{lo}"


def _ratio_stats(r: pd.Series) -> dict:
    v = r.to_numpy(float)
    return {"steps": int(len(v)), "median": float(np.median(v)),
            "p25": float(np.percentile(v, 25)), "p75": float(np.percentile(v, 75))}


#: Fewest matched decode steps, and distinct batch sizes among them, for a decode fit.
MIN_FIT_STEPS = 20
MIN_FIT_BATCHES = 3
#: Above this correlation of batch size and context (a burst: every request started
#: together, so context grows as the batch shrinks) the two terms cannot be told apart.
MAX_FIT_CORRELATION = 0.95


def decode_fit(decode: pd.DataFrame) -> dict | None:
    """Least squares of the decode steps' real durations on (1, sequences, decode context):
    the fixed, per-sequence and per-context-token costs the load itself shows, to set beside
    the model's ``step_s``, ``token_s + seq_s`` and ``decode_attn_s``. None with too few steps
    or batch sizes, or batch sizes and contexts that move together, to tell them apart."""
    if len(decode) < MIN_FIT_STEPS or decode["seqs"].nunique() < MIN_FIT_BATCHES:
        return None
    if decode["decode_context"].nunique() > 1:
        corr = np.corrcoef(decode["seqs"].to_numpy(float), decode["decode_context"].to_numpy(float))[0, 1]
        if abs(corr) > MAX_FIT_CORRELATION:
            return None
    x = np.c_[np.ones(len(decode)), decode["seqs"].to_numpy(float), decode["decode_context"].to_numpy(float)]
    coef, *_ = np.linalg.lstsq(x, decode["duration_s"].to_numpy(float), rcond=None)
    return {"steps": int(len(decode)), "fixed_s": float(coef[0]), "per_seq_s": float(coef[1]),
            "per_context_token_s": float(coef[2])}


def summarise(steps: pd.DataFrame, profile: LatencyProfile | None = None) -> dict:
    """Per load and kind, and for decode steps per batch size and per-sequence context:
    the matched busy steps' ratio (median, quartiles) and the share of steps matched; and
    the decode fit of each load beside the model's terms (with ``profile``)."""
    out: dict = {"loads": {}, "skipped_loads": dict(steps.attrs.get("skipped_loads", {}))}
    if profile is not None:
        m = profile.model
        out["model_decode"] = {"fixed_s": m.step_s, "per_seq_s": m.token_s + m.seq_s,
                               "per_context_token_s": m.decode_attn_s, "matmul_floor_s": m.matmul_floor_s,
                               "single_row_s": m.single_row_s}
    for load, g in steps.groupby("load", sort=False):
        busy = g[g["duration_s"].notna()]
        good = busy[busy["matched"]]
        entry: dict = {"steps": int(len(g)), "busy": int(len(busy)),
                       "matched_share": float(busy["matched"].mean()) if len(busy) else math.nan,
                       "real_busy_s": float(good["duration_s"].sum()),
                       "predicted_busy_s": float(good["predicted_s"].sum()), "kinds": {}}
        for kind, h in good.groupby("kind"):
            entry["kinds"][str(kind)] = _ratio_stats(h["ratio"])
        dec = good[good["kind"] == "decode"]
        if len(dec):
            seq_bin = pd.cut(dec["seqs"], SEQ_BINS)
            entry["decode_by_seqs"] = {_bin_label(int(b.left), int(b.right)): _ratio_stats(h["ratio"])
                                       for b, h in dec.groupby(seq_bin, observed=True)}
            ctx_bin = pd.cut(dec["decode_context"] / dec["seqs"], CONTEXT_BINS)
            entry["decode_by_context"] = {_bin_label(int(b.left), int(b.right)): _ratio_stats(h["ratio"])
                                          for b, h in dec.groupby(ctx_bin, observed=True)}
        entry["decode_fit"] = decode_fit(dec)
        out["loads"][str(load)] = entry
    return out


def format_summary(summary: dict) -> str:
    """A few lines: per load, the matched share and the median ratio per kind of step."""
    lines = ["engine steps (real duration / the model's, matched busy steps):"]
    for load, e in summary["loads"].items():
        kinds = ", ".join(f"{k} {v['median']:.2f} (IQR {v['p25']:.2f}-{v['p75']:.2f}, {v['steps']} steps)"
                          for k, v in e["kinds"].items()) or "none matched"
        busy = e["real_busy_s"] / e["predicted_busy_s"] if e["predicted_busy_s"] > 0 else math.nan
        lines.append(f"  {load:<12} {e['matched_share'] * 100:5.1f}% of {e['busy']} busy steps matched; {kinds}; "
                     f"their time {busy:.3f}x the model's")
        fit = e.get("decode_fit")
        if fit:
            lines.append(f"  {'':<12} decode steps under this load: {fit['fixed_s'] * 1e3:.1f} ms + "
                         f"{fit['per_seq_s'] * 1e3:.2f} ms/sequence + "
                         f"{fit['per_context_token_s'] * 1e6:.2f} us/context token")
    for load, why in summary["skipped_loads"].items():
        lines.append(f"  {load:<12} not timed: {why}")
    model = summary.get("model_decode")
    if model:
        lines.append(f"  {'model':<12} decode steps: {model['fixed_s'] * 1e3:.1f} ms + {model['per_seq_s'] * 1e3:.2f} "
                     f"ms/sequence + {model['per_context_token_s'] * 1e6:.2f} us/context token "
                     f"(at least {model['matmul_floor_s'] * 1e3:.1f} ms of matmuls; a lone decode "
                     f"{model.get('single_row_s', 0.0) * 1e3:+.2f} ms)")
    return "\n".join(lines)
