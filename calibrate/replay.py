"""Replay measured requests through the simulator's engine model, one unit at a time.

The step-time model is about engine *steps*, but a client only observes
*requests*. To compare like with like, each measured unit (its requests with
their real send times, lengths and prefix sharing) is rebuilt as a ``Trace`` and
run through ``sim.cluster.simulate`` on one backend with a candidate latency
model; the simulated TTFT/TPOT/E2EL of the very same requests come back aligned
with the measured rows. The fitter (``calibrate.fit``) and the fidelity check
(``calibrate.check``) both use this.

Two costs outside engine steps: a fixed per-request overhead (time that
occupies nothing, e.g. the client's and the network's), modelled as the
cluster's ``network_delay_s`` = overhead / 2 on the way in and out; and vLLM's
API-server front end (``sim.frontend``), a FIFO server whose input and output
jobs delay admission and token delivery and queue behind each other.

``linearize_units`` replays the same schedule one step at a time and carries
every time as an affine function of the parameters, which is what the fit
(``calibrate.fit``) solves on.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import pandas as pd

import routing
from calibrate.prompts import profiling_trace
from calibrate.modeldir import TOKENIZER_VOCAB_SIZE
from sim.cluster import BackendConfig, ClusterConfig, simulate
from sim.engine import EngineConfig
from sim.frontend import FRONT_END_COEFFICIENTS, FrontEndModel, tokens_per_step
from sim.latency import COEFFICIENTS, EngineDefaults, LatencyModel, LatencyProfile
from sim.speed import SpeedWander
from workload.trace import Trace

#: Gap between replayed requests of a ``sequential`` unit: far longer than any request.
SEQUENTIAL_SPACING_S = 1000.0
#: Columns a measured row needs to be replayed.
REPLAY_COLUMNS = ("unit", "request_id", "input_len", "output_len", "prefix_id", "shared_len", "send_s")


@dataclass
class PreparedUnit:
    """One unit's trace, and which measured rows its simulated requests belong to."""

    key: str
    trace: Trace
    rows: np.ndarray  # positions in the measured frame, in trace order


def prepare_units(data: pd.DataFrame, block_size: int,
                  vocab_size: int = TOKENIZER_VOCAB_SIZE) -> list[PreparedUnit]:
    """Traces of every unit of ``data`` (ok rows with at least one output token)."""
    missing = [c for c in REPLAY_COLUMNS if c not in data.columns]
    if missing:
        raise ValueError(f"profiling data lacks column(s) {', '.join(missing)} needed to replay it")
    units = []
    for key, g in data.groupby("unit", sort=False):
        g = g.sort_values("send_s", kind="stable")
        arrivals = g["send_s"].to_numpy(float)
        arrivals = arrivals - arrivals.min()
        if "mode" in g and (g["mode"] == "sequential").all():
            # Each was sent when the previous one had finished, to an idle engine. Replayed at
            # the measured times, a candidate slower than reality would overlap them; spaced
            # apart they run alone as they did (the prefix cache still keeps their blocks).
            arrivals = np.arange(len(g), dtype=float) * SEQUENTIAL_SPACING_S
        trace = profiling_trace(g["request_id"].to_numpy(), g["input_len"].to_numpy(),
                            g["output_len"].to_numpy(), arrivals, g["prefix_id"].to_numpy(),
                            g["shared_len"].to_numpy(), block_size=block_size, vocab_size=vocab_size,
                            label=f"{key}:")
        pos = pd.Series(np.arange(len(data)), index=data.index)[g.index].to_numpy()
        # profiling_trace sorts by arrival (stable), and g is already in that order.
        units.append(PreparedUnit(str(key), trace, pos))
    return units


#: Every fitted parameter, in design-matrix column order: the step-time coefficients,
#: the fixed per-request overhead, then the API-server front end's costs.
PARAMS = COEFFICIENTS + ("overhead_s",) + FRONT_END_COEFFICIENTS
NPARAM = len(PARAMS)
_OVERHEAD = PARAMS.index("overhead_s")
_FE = {name: PARAMS.index(name) for name in FRONT_END_COEFFICIENTS}


def pack(model: LatencyModel, overhead_s: float, front_end: FrontEndModel = FrontEndModel()) -> np.ndarray:
    """The parameter vector in ``PARAMS`` order."""
    return np.array([getattr(model, c) for c in COEFFICIENTS] + [overhead_s]
                    + [getattr(front_end, c) for c in FRONT_END_COEFFICIENTS], float)


def unpack(theta: np.ndarray, knee: float = 1.0,
           single_row_s: float = 0.0) -> tuple[LatencyModel, float, FrontEndModel]:
    """The model, overhead and front end of ``theta``; with ``knee`` > 1 the matmuls' floor
    (``sim.latency``) is ``knee`` decodes' worth of matmuls, ``knee * (token_s + seq_s)``.
    ``single_row_s`` is held, not a parameter (``calibrate.step_fit`` measures it)."""
    theta = np.maximum(np.asarray(theta, float), 0.0)
    coeffs = {c: float(theta[i]) for i, c in enumerate(COEFFICIENTS)}
    if knee > 1.0:
        coeffs["matmul_floor_s"] = knee * (coeffs["token_s"] + coeffs["seq_s"])
    if single_row_s:
        coeffs["single_row_s"] = single_row_s
    model = LatencyModel(**coeffs)
    fe = FrontEndModel(**{c: float(theta[_FE[c]]) for c in FRONT_END_COEFFICIENTS})
    return model, float(theta[_OVERHEAD]), fe


def matmul_knee(model: LatencyModel) -> float:
    """How many one-token decodes' matmuls the model's floor equals (1: no floor).

    The fit holds the floor at a fixed knee while it moves ``token_s`` and ``seq_s``,
    which keeps every step time linear in the parameters for a given schedule.
    """
    per_decode = model.token_s + model.seq_s
    if model.matmul_floor_s <= 0 or per_decode <= 0:
        return 1.0
    return max(model.matmul_floor_s / per_decode, 1.0)


def make_profile(model: LatencyModel, engine: EngineDefaults, name: str = "candidate",
                 front_end: FrontEndModel = FrontEndModel()) -> LatencyProfile:
    return LatencyProfile(name=name, model=model, engine=engine, front_end=front_end)


def engine_config(engine: EngineDefaults) -> EngineConfig:
    return EngineConfig(num_kv_blocks=engine.num_kv_blocks, block_size=engine.block_size,
                        max_num_seqs=engine.max_num_seqs, max_num_batched_tokens=engine.max_num_batched_tokens)


def simulate_units(units: list[PreparedUnit], n_rows: int, model: LatencyModel, engine: EngineDefaults,
                   overhead_s: float = 0.0, front_end: FrontEndModel = FrontEndModel(),
                   speed: SpeedWander | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Simulated (ttft, tpot, e2el) per measured row (NaN for rows not replayed), by ``sim.cluster``.

    ``speed``: replay on a machine whose speed wanders so (``sim.speed``); each unit
    starts reading it at its own time 0.
    """
    ttft = np.full(n_rows, np.nan)
    tpot = np.full(n_rows, np.nan)
    e2el = np.full(n_rows, np.nan)
    profile = make_profile(model, engine, front_end=front_end)
    cluster = ClusterConfig([BackendConfig("backend", "backend", profile, engine_config(engine), speed)],
                            network_delay_s=max(overhead_s, 0.0) / 2.0, drain_s=3600.0)
    for unit in units:
        result = simulate(unit.trace, routing.build("round_robin"), cluster)
        recs = result.records
        t = np.array([r.first_token_s - r.arrival_s if r.status == "ok" else np.nan for r in recs])
        e = np.array([r.last_token_s - r.arrival_s if r.status == "ok" else np.nan for r in recs])
        n_out = np.array([r.output_len for r in recs], dtype=float)
        with np.errstate(invalid="ignore", divide="ignore"):
            p = np.where(n_out > 1, (e - t) / (n_out - 1), np.nan)
        ttft[unit.rows], tpot[unit.rows], e2el[unit.rows] = t, p, e
    return ttft, tpot, e2el


class StepRecorder:
    """Wraps a ``LatencyModel`` and records each step's composition as the engine plans it."""

    def __init__(self, model: LatencyModel) -> None:
        self.model = model
        self.last: tuple[int, int, float, int] = (0, 0, 0.0, 0)

    def step_time(self, num_tokens: int, num_seqs: int, prefill_attn_work: float, decode_context: int) -> float:
        self.last = (num_tokens, num_seqs, prefill_attn_work, decode_context)
        return self.model.step_time(num_tokens, num_seqs, prefill_attn_work, decode_context)

    def decode_run(self, *args):  # pragma: no cover - the linearizer plans one step at a time
        raise AssertionError("the schedule recorder steps one step at a time")


@dataclass
class Linearized:
    """Per measured row, latency = ``const + design @ theta`` with ``theta`` in ``PARAMS`` order.

    Exact for the schedule the engine model and the front end produced under the
    parameters it was built with (which requests share which steps, and which
    job each front-end job waited for); NaN rows were not replayed.
    """

    ttft_design: np.ndarray  # (rows, NPARAM)
    ttft_const: np.ndarray  # (rows,)
    tpot_design: np.ndarray  # (rows, NPARAM)
    tpot_const: np.ndarray  # (rows,)
    e2el_design: np.ndarray  # (rows, NPARAM)
    e2el_const: np.ndarray  # (rows,)
    steps: int
    theta: np.ndarray  # the parameters it was built with


def _later(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The later of two affine times ``[value, d value / d theta...]`` (a tie keeps ``a``)."""
    return a if a[0] >= b[0] else b


def linearize_units(units: list[PreparedUnit], n_rows: int, model: LatencyModel, engine: EngineDefaults,
                    overhead_s: float = 0.0, front_end: FrontEndModel = FrontEndModel()) -> Linearized:
    """Step ``sim.engine.Engine`` and the front end through every unit and record the schedule.

    Every latency comes back as ``const + design @ theta``: its value is exactly
    what ``sim.cluster`` simulates (tested), and ``design`` is its sensitivity
    to the parameters *for this schedule*, built *locally*: a request's latency
    moves with the steps that ran after it reached the engine (and the part of
    the step in progress then), not with the whole busy period before it. (In a
    long busy period the end of step k is the sum of every earlier step, but a
    request that arrives at a fixed time does not wait longer because earlier
    steps were slower: it joins a later step. Differentiating the whole chain
    would say it does, by hundreds of steps, and a fit on it cannot move.)

    Times are carried as vectors ``[value, gradient]``. A front-end job starts at
    the later of its arrival and the end of the job before it (``sim.frontend``)
    and adds its cost; a step's end enters the front end with its own duration's
    gradient. Which branch each "later of" took is part of the schedule.
    """
    from sim.engine import Engine
    from sim.request import EngineRequest

    knee = matmul_knee(model)

    nanP = np.full((n_rows, NPARAM), np.nan)
    lin = Linearized(nanP.copy(), np.full(n_rows, np.nan), nanP.copy(), np.full(n_rows, np.nan), nanP.copy(),
                     np.full(n_rows, np.nan), 0, pack(model, max(overhead_s, 0.0), front_end))
    cfg = engine_config(engine)
    theta = lin.theta
    zero = np.zeros(NPARAM + 1)
    half = zero.copy()
    half[0], half[1 + _OVERHEAD] = theta[_OVERHEAD] / 2.0, 0.5
    in_unit = zero.copy()
    in_unit[0], in_unit[1 + _FE["input_s"]] = front_end.input_s, 1.0
    in_tok = zero.copy()
    in_tok[0], in_tok[1 + _FE["input_token_s"]] = front_end.input_token_s, 1.0
    out_unit = zero.copy()
    out_unit[0], out_unit[1 + _FE["output_step_s"]] = front_end.output_step_s, 1.0
    out_tok = zero.copy()
    out_tok[0], out_tok[1 + _FE["output_token_s"]] = front_end.output_token_s, 1.0
    for unit in units:
        trace = unit.trace
        rec = StepRecorder(model)
        eng = Engine(cfg, rec)  # duck-typed latency: records every planned step
        shareable = trace.shareable_blocks().tolist()
        arrivals = trace.arrival_s
        input_len = trace.input_len
        n = len(trace)
        # Per request: the step from which its wait counts, the gradient before that step,
        # and for its first and last token: (step, branch gradient or None for "the engine's").
        from_step = np.zeros(n, dtype=np.int64)
        base = np.zeros((n, NPARAM))
        first: list = [None] * n
        last: list = [None] * n
        first_val = np.full(n, np.nan)
        last_val = np.full(n, np.nan)
        phis: list[np.ndarray] = []  # per step: its duration's gradient
        fe_free = None  # when the front end's last job ends (None: no job yet)
        ready: deque = deque()  # (time the request reaches the engine, index), in order
        nxt = 0  # next request whose input job is not served yet
        busy = False  # the engine has work after its last step
        last_start = last_end = 0.0
        steps = 0

        def serve_inputs(until: float, strict: bool) -> None:
            nonlocal nxt, fe_free
            while nxt < n and (arrivals[nxt] + half[0] < until if strict else arrivals[nxt] + half[0] <= until):
                at = half.copy()
                at[0] += arrivals[nxt]
                start = at if fe_free is None else _later(at, fe_free)
                fe_free = start + in_unit + int(input_len[nxt]) * in_tok
                ready.append((fe_free, nxt))
                nxt += 1

        while nxt < n or ready or eng.has_work:
            if busy:
                S = zero.copy()
                S[0] = last_end
            else:
                if not ready:
                    serve_inputs(arrivals[nxt] + half[0], strict=False)
                S = ready[0][0]
                if steps and S[0] < last_end:
                    # It reached the engine during the last step: it waits for that step's end.
                    S = zero.copy()
                    S[0] = last_end
            serve_inputs(S[0], strict=False)
            k = steps
            while ready and ready[0][0][0] <= S[0]:
                R, i = ready.popleft()
                eng.add_request(EngineRequest(i, int(input_len[i]), int(trace.output_len[i]),
                                              trace.hashes(i), arrival=float(S[0]), num_shareable=shareable[i]))
                from_step[i] = k
                if busy or (k and R[0] < last_end):
                    # Joined while step k-1 ran: it waits for the rest of that step.
                    dur = last_end - last_start
                    frac = min(max((last_end - R[0]) / dur, 0.0), 1.0) if dur > 0 else 0.0
                    base[i] = frac * phis[k - 1]
                else:
                    base[i] = S[1:]  # an idle engine starts when this one (or the first) arrives
            plan = eng.plan(1)
            emitting = tokens_per_step(plan)
            out = eng.complete(plan, 1, float(S[0]))
            tokens, seqs, work, ctx = rec.last
            phi = np.zeros(NPARAM)
            if model.matmul_floor_s > model.token_s * tokens + model.seq_s * seqs:
                phi[:5] = (1.0, knee, knee, work, ctx)  # under the floor: knee decodes' worth of matmuls
            else:
                phi[:5] = (1.0, tokens, seqs, work, ctx)
            phis.append(phi)
            last_start, last_end = float(S[0]), float(S[0]) + plan.first
            steps += 1
            E = zero.copy()
            E[0], E[1:] = last_end, phi
            # Requests reaching the front end before the step ends are served before its output job.
            serve_inputs(last_end, strict=True)
            engine_branch = fe_free is None or E[0] >= fe_free[0]
            start = E if engine_branch else fe_free
            fe_free = start + out_unit + emitting * out_tok
            # The request's own gradient: the engine's branch is "its wait since it arrived".
            job = None if engine_branch else fe_free[1:]
            cost = (out_unit + emitting * out_tok)[1:]
            for r in out.first_tokens:
                first[r.id] = (k, job, cost)
                first_val[r.id] = fe_free[0]
            for r in out.finished:
                last[r.id] = (k, job, cost)
                last_val[r.id] = fe_free[0]
            busy = eng.has_work
        lin.steps += steps
        cum = np.vstack([np.zeros((1, NPARAM)), np.cumsum(np.array(phis).reshape(-1, NPARAM), axis=0)])

        def grad(i: int, event) -> np.ndarray:
            k, job, cost = event
            if job is not None:
                return job
            return base[i] + cum[k + 1] - cum[from_step[i]] + cost

        for i in range(n):
            if first[i] is None or last[i] is None:
                continue
            row = unit.rows[i]
            g_f = grad(i, first[i]) + half[1:]
            g_l = grad(i, last[i]) + half[1:]
            f_val = first_val[i] + half[0] - arrivals[i]
            l_val = last_val[i] + half[0] - arrivals[i]
            lin.ttft_design[row] = g_f
            lin.ttft_const[row] = f_val - g_f @ theta
            lin.e2el_design[row] = g_l
            lin.e2el_const[row] = l_val - g_l @ theta
            nout = int(trace.output_len[i])
            if nout > 1:
                lin.tpot_design[row] = (g_l - g_f) / (nout - 1)
                lin.tpot_const[row] = (lin.e2el_const[row] - lin.ttft_const[row]) / (nout - 1)
    return lin
