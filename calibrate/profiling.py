"""The Phase 2 profiling sweep against one backend -> ``profiling_data.csv``.

Six phases, from idle to overload and two direct measurements, each a list of units (see ``calibrate.probe``):

1. ``idle``: one request at a time over prompt-length buckets x output lengths:
   the closed-form regime (``LatencyModel.single_request``) that anchors the fit.
2. ``prefix``: prefix-reuse probes, one at a time: a new prompt, the same prompt
   again (full hit), a prompt sharing its first half; then a group sent at once
   that shares one prefix (blocks shared while they are being computed).
3. ``concurrency``: closed loops at rising concurrency with a mixed request mix;
   the best throughput seen is the backend's capacity.
4. ``poisson``: open-loop Poisson arrivals at fractions of that capacity, past 1
   (overload).
5. ``frontend``: four small units that measure the API server's CPU seconds per
   request, prompt token, engine step and streamed token
   (``calibrate.frontend_cpu``), when the server is a local process.
6. ``decode``: ``n`` short requests sent at once for each batch size ``n``; the
   gap between their tokens while all ``n`` decode is one decode step of ``n``
   sequences (``calibrate.decode_steps``), recorded per batch size in the
   metadata's ``decode_steps``: the fit places the matmuls' knee with it. Then
   the same at long context (``decode_context_batch`` requests of each
   ``decode_context_prompts`` length, and of the short length again as their base,
   in ``decode_context_steps``): the fit holds the decode attention at what they
   measure.

Every token's arrival time of the loaded units (``concurrency`` and ``poisson``) is
kept in ``<out>.token_times.jsonl``, one line per unit (``LOADED_PHASES``): the fit
recovers each of their engine steps from them (``calibrate.step_fit``) and fits the
step-time model to the steps themselves.

Output lengths are controlled (``ignore_eos`` with ``max_tokens``). Prompts are
token ids built so that prefix sharing is exact (``calibrate.prompts``).

Resumable: rows are appended to the CSV after each unit and the unit is marked
done in ``<out>.meta.json`` (with the salt, id counters and measured capacity),
so ``--resume`` continues with the first unfinished unit.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from calibrate.backend import BackendInfo, probe_backend
from calibrate import decode_steps, frontend_cpu
from calibrate.probe import PlannedRequest, Runner, Unit
from calibrate.procstat import listening_pid
from calibrate.machine import command_line, loadavg, machine_info, utc_now
from calibrate.modeldir import TOKENIZER_VOCAB_SIZE
from live.transport.client import make_session

#: In the order they run; a new phase goes last, so that the others keep their seeds.
PHASES = ("idle", "prefix", "concurrency", "poisson", "frontend", "decode")
#: Share of the time budget each phase may use (caps; a fast backend finishes early).
PHASE_SHARE = {"idle": 0.2, "prefix": 0.1, "concurrency": 0.35, "poisson": 0.35, "frontend": 0.1, "decode": 0.1}
META_VERSION = 1
#: Phases whose units keep every token's arrival time (``token_times_path``): their engine steps are timed.
LOADED_PHASES = ("concurrency", "poisson")


class ProfileError(RuntimeError):
    """Bad settings, or an output file that cannot be resumed or overwritten."""


@dataclass
class ProfileSettings:
    buckets: tuple[int, ...] = (32, 128, 512, 1024, 2048)
    #: Probability of each bucket in the mixed (concurrency, Poisson) phases.
    bucket_weights: tuple[float, ...] = (0.3, 0.3, 0.2, 0.12, 0.08)
    idle_outputs: tuple[int, ...] = (16, 128)
    idle_reps: int = 2
    prefix_lens: tuple[int, ...] = (512, 2048)
    prefix_reps: int = 2
    prefix_group_size: int = 8
    mix_outputs: tuple[int, ...] = (16, 64, 128)
    concurrency: tuple[int, ...] = (2, 4, 8, 16, 32, 64)
    per_level_min: int = 24  # requests per concurrency level: max(this, 2 * level)
    poisson_fractions: tuple[float, ...] = (0.3, 0.6, 0.9, 1.2)
    poisson_requests: int = 60
    #: Size of the front-end measurement units (1: the full plan of ``calibrate.frontend_cpu``).
    frontend_scale: float = 1.0
    #: Batch sizes of the decode phase, and each request's prompt and output tokens there.
    decode_batches: tuple[int, ...] = decode_steps.DEFAULT_BATCHES
    decode_prompt_len: int = 32
    decode_output_len: int = 96
    #: Long-context decode units: prompt lengths and batch size (empty: none).
    decode_context_prompts: tuple[int, ...] = decode_steps.DEFAULT_CONTEXT_PROMPTS
    decode_context_batch: int = decode_steps.CONTEXT_BATCH
    budget_s: float = 900.0
    seed: int = 0
    scrape_interval_s: float = 0.25
    max_model_len: int = 4096
    vocab_size: int = TOKENIZER_VOCAB_SIZE
    block_size: int = 0  # 0: the backend's (from /metrics), else 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    group: str = ""  # "": the served model name

    def __post_init__(self) -> None:
        if len(self.bucket_weights) != len(self.buckets):
            raise ProfileError(f"{len(self.bucket_weights)} bucket weights for {len(self.buckets)} buckets")
        if not self.budget_s > 0:
            raise ProfileError(f"budget_s must be > 0, got {self.budget_s}")
        longest = max(self.buckets) + max(max(self.idle_outputs), max(self.mix_outputs))
        if longest > self.max_model_len:
            raise ProfileError(
                f"the longest request ({longest} tokens) exceeds max_model_len {self.max_model_len}; "
                f"lower the buckets or raise max_model_len"
            )
        if any(b < 1 for b in self.buckets) or any(c < 1 for c in self.concurrency):
            raise ProfileError("buckets and concurrency levels must be >= 1")
        if any(b < 1 for b in self.decode_batches) or self.decode_prompt_len < 1 or self.decode_output_len < 8:
            raise ProfileError("decode batch sizes and decode_prompt_len must be >= 1, decode_output_len >= 8, got "
                               f"{list(self.decode_batches)}, {self.decode_prompt_len}, {self.decode_output_len}")
        if self.decode_prompt_len + self.decode_output_len > self.max_model_len:
            raise ProfileError(f"a decode request ({self.decode_prompt_len + self.decode_output_len} tokens) "
                               f"exceeds max_model_len {self.max_model_len}")
        if self.decode_context_prompts:
            if self.decode_context_batch < 1 or min(self.decode_context_prompts) < 1:
                raise ProfileError(f"decode_context_batch and decode_context_prompts must be >= 1, got "
                                   f"{self.decode_context_batch} and {list(self.decode_context_prompts)}")
            if self.decode_context_batch not in self.decode_batches:
                raise ProfileError(f"decode_context_batch {self.decode_context_batch} needs a short-context step of "
                                   f"the same batch: add it to decode_batches {list(self.decode_batches)}")
            longest = max(self.decode_context_prompts) + decode_steps.CONTEXT_OUTPUT_LEN
            if longest > self.max_model_len:
                raise ProfileError(f"a long-context decode request ({longest} tokens) exceeds max_model_len "
                                   f"{self.max_model_len}")


@dataclass
class _Ids:
    next_request: int = 0
    next_prefix: int = 0

    def request(self) -> int:
        self.next_request += 1
        return self.next_request - 1

    def prefix(self) -> int:
        self.next_prefix += 1
        return self.next_prefix - 1


def _mixed(ids: _Ids, s: ProfileSettings, rng: np.random.Generator, n: int) -> list[PlannedRequest]:
    weights = np.asarray(s.bucket_weights, float) / sum(s.bucket_weights)
    picks = rng.choice(len(s.buckets), size=n, p=weights)
    out = []
    for k in picks:
        b = s.buckets[k]
        lo = max(1, int(0.75 * b))
        out.append(PlannedRequest(ids.request(), int(rng.integers(lo, b + 1)),
                                  int(rng.choice(s.mix_outputs)), bucket=str(b)))
    return out


def plan_idle(ids: _Ids, s: ProfileSettings, rng: np.random.Generator) -> list[Unit]:
    reqs = [PlannedRequest(ids.request(), b, o, bucket=str(b))
            for _ in range(s.idle_reps) for b in s.buckets for o in s.idle_outputs]
    rng.shuffle(reqs)
    return [Unit("idle", "idle", "sequential", reqs, time_cap_s=s.budget_s * PHASE_SHARE["idle"])]


def plan_prefix(ids: _Ids, s: ProfileSettings, rng: np.random.Generator) -> list[Unit]:
    out = min(s.idle_outputs)
    reqs: list[PlannedRequest] = []
    for _ in range(s.prefix_reps):
        for L in s.prefix_lens:
            p = ids.prefix()
            reqs.append(PlannedRequest(ids.request(), L, out, p, L, bucket=f"{L}:new"))
            reqs.append(PlannedRequest(ids.request(), L, out, p, L, bucket=f"{L}:repeat"))
            reqs.append(PlannedRequest(ids.request(), L, out, p, L // 2, bucket=f"{L}:half"))
    share = s.budget_s * PHASE_SHARE["prefix"]
    units = [Unit("prefix", "probe", "sequential", reqs, time_cap_s=share * 0.6)]
    L = s.prefix_lens[0]
    p = ids.prefix()
    group = [PlannedRequest(ids.request(), L + int(rng.integers(1, 64)), out, p, L, bucket=f"{L}:group")
             for _ in range(s.prefix_group_size)]
    units.append(Unit("prefix", "group", "open", group, concurrency=len(group), time_cap_s=share * 0.4))
    return units


def plan_concurrency(ids: _Ids, s: ProfileSettings, rng: np.random.Generator) -> list[Unit]:
    share = s.budget_s * PHASE_SHARE["concurrency"] / len(s.concurrency)
    return [Unit("concurrency", f"c{c}", "closed", _mixed(ids, s, rng, max(s.per_level_min, 2 * c)),
                 concurrency=c, time_cap_s=share) for c in s.concurrency]


def plan_poisson(ids: _Ids, s: ProfileSettings, rng: np.random.Generator, capacity_rps: float) -> list[Unit]:
    share = s.budget_s * PHASE_SHARE["poisson"] / len(s.poisson_fractions)
    units = []
    for f in s.poisson_fractions:
        rate = f * capacity_rps
        # Send for at most ~70% of the unit's share, leaving time to drain.
        n = int(max(8, min(s.poisson_requests, rate * share * 0.7)))
        reqs = _mixed(ids, s, rng, n)
        t = np.cumsum(rng.exponential(1.0 / rate, size=n))
        t -= t[0]
        for r, at in zip(reqs, t):
            r.at_s = float(at)
        units.append(Unit("poisson", f"r{f:g}", "open", reqs, rate=rate, time_cap_s=share))
    return units


def plan_decode_phase(ids: _Ids, s: ProfileSettings) -> list[Unit]:
    """The decode units (``calibrate.decode_steps``), each capped at its share of the phase's time."""
    units = decode_steps.plan_decode(ids.request, s.decode_batches, s.decode_prompt_len, s.decode_output_len)
    if s.decode_context_prompts:
        # The short prompt again at the same batch, beside the long ones: the base of their difference.
        units += decode_steps.plan_decode_context(ids.request, s.decode_context_batch,
                                                  (s.decode_prompt_len, *s.decode_context_prompts))
    share = s.budget_s * PHASE_SHARE["decode"] / len(units)
    for u in units:
        u.time_cap_s = share
    return units


def _record_decode_step(meta: dict, runner: Runner, unit: Unit, s: ProfileSettings) -> None:
    """The unit's decode step into ``meta["decode_steps"]`` by batch size, or for a long-context unit into
    ``meta["decode_context_steps"]`` by prompt length (a batch with a failed request is recorded as None)."""
    times = [runner.token_times.pop(r.request_id, None) for r in unit.requests]
    first = unit.requests[0]
    long_context = first.bucket.startswith("ctx")
    steps = meta.setdefault("decode_context_steps" if long_context else "decode_steps", {})
    key = str(first.input_len) if long_context else str(unit.concurrency)
    if any(t is None for t in times):
        steps[key] = None
        return
    steps[key] = decode_steps.measure(unit.concurrency, times, first.input_len, first.output_len)


def capacity_from_rows(rows: pd.DataFrame) -> float:
    """Best request throughput (req/s) over the closed-loop units: the backend's capacity."""
    best = 0.0
    conc = rows[(rows["phase"] == "concurrency") & rows["ok"].astype(bool)]
    for _, g in conc.groupby("unit"):
        if len(g) < 4:
            continue
        span = float((g["send_s"] + g["e2el_s"]).max() - g["send_s"].min())
        if span > 0:
            best = max(best, len(g) / span)
    if best <= 0:
        raise ProfileError("no usable closed-loop measurements to estimate capacity from")
    return best


async def _frontend_setup(meta: dict, url: str) -> bool:
    """Find the API server's process and measure its idle CPU rate (once); False if it is not local."""
    fe = meta.get("frontend_cpu")
    pid = listening_pid(url)
    if fe and fe.get("pid") == pid and pid is not None:
        return True
    if pid is None:
        meta["frontend_cpu"] = {"ok": False, "reason": f"no local process listens on {url}: the API server's "
                                                       "CPU cannot be measured from here"}
        return False
    # A new server (a resumed run): measure its baseline; units measured before keep their records.
    meta["frontend_cpu"] = {"pid": pid, "baseline_cpu_per_s": await frontend_cpu.baseline_rate(pid),
                            "units": (fe or {}).get("units", {})}
    return True


def meta_path(out: Path) -> Path:
    return out.with_name(out.name + ".meta.json")


def token_times_path(out: Path) -> Path:
    """The loaded units' token arrival times: one JSON line per unit, ``{"unit": key, "requests":
    {id: [seconds, ...]}}``, on the clock of the rows' ``unit_start_s + send_s``."""
    return out.with_name(out.name + ".token_times.jsonl")


def _append_token_times(out: Path, unit: Unit, runner: Runner) -> None:
    times = {r.request_id: runner.token_times.pop(r.request_id) for r in unit.requests
             if r.request_id in runner.token_times}
    line = {"unit": unit.key, "requests": {str(k): [round(t - runner.t0, 6) for t in v]
                                           for k, v in sorted(times.items())}}
    with token_times_path(out).open("a") as f:
        f.write(json.dumps(line) + "\n")


def read_unit_token_times(out: str | Path) -> dict[int, list[float]]:
    """Every loaded unit's token times by request id (empty when the profile kept none). A line
    cut short (a crash while it was written) is refused, as the fit refuses cut rows."""
    path = token_times_path(Path(out))
    if not path.is_file():
        return {}
    times: dict[int, list[float]] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            times.update({int(k): [float(t) for t in v] for k, v in json.loads(line)["requests"].items()})
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
            raise ProfileError(f"{path} line {n} is not a unit's token times ({e}): cut short or edited") from None
    return times


def _load_state(out: Path, resume: bool, overwrite: bool) -> dict | None:
    meta_file = meta_path(out)
    if out.exists() or meta_file.exists():
        if resume:
            if not meta_file.exists():
                raise ProfileError(f"cannot resume {out}: its metadata {meta_file} is missing")
            meta = json.loads(meta_file.read_text())
            if meta.get("meta_version") != META_VERSION:
                raise ProfileError(f"{meta_file} has meta_version {meta.get('meta_version')!r}, "
                                   f"this version writes {META_VERSION}")
            return meta
        if not overwrite:
            raise ProfileError(f"{out} already exists; pass --resume to continue it or --overwrite to replace it")
        out.unlink(missing_ok=True)
        meta_file.unlink(missing_ok=True)
        token_times_path(out).unlink(missing_ok=True)
    elif resume:
        raise ProfileError(f"cannot resume: {out} does not exist")
    return None


def _append(out: Path, rows: list[dict]) -> None:
    if not rows:
        return
    frame = pd.DataFrame(rows)
    header = not out.exists() or out.stat().st_size == 0
    frame.to_csv(out, mode="a", header=header, index=False)


def _save_meta(out: Path, meta: dict) -> None:
    tmp = meta_path(out).with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    tmp.replace(meta_path(out))


async def profile_backend(url: str, out: str | Path, settings: ProfileSettings | None = None, *,
                          resume: bool = False, overwrite: bool = False, progress: bool = True,
                          phases: tuple[str, ...] = PHASES) -> Path:
    """Run the sweep against ``url``; rows go to ``out`` and provenance to ``out.meta.json``."""
    s = settings or ProfileSettings()
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        raise ProfileError(f"unknown phase(s) {unknown}; allowed: {', '.join(PHASES)}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    async with make_session(concurrency=max(max(s.concurrency), s.prefix_group_size, 256)) as session:
        info: BackendInfo = await probe_backend(session, url)
        meta = _load_state(out, resume, overwrite)
        block_size = s.block_size or (info.block_size if info.block_size > 0 else 16)
        if meta is None:
            rng_salt = int(np.random.default_rng().integers(1, 1 << 31))
            meta = {
                "meta_version": META_VERSION,
                "created": utc_now(),
                "command": command_line(),
                "backend": info.to_dict(),
                "machine": machine_info(),
                "settings": asdict(s),
                "block_size": block_size,
                "salt": rng_salt,
                "next_request_id": 0,
                "next_prefix_id": 0,
                "units_done": [],
                "unit_log": [],
                "capacity_rps": None,
            }
        elif meta["backend"].get("model") != info.model:
            raise ProfileError(f"cannot resume: {out} profiled model {meta['backend'].get('model')!r}, "
                               f"but {url} serves {info.model!r}")
        ids = _Ids(meta["next_request_id"], meta["next_prefix_id"])
        group = s.group or info.model
        bar = tqdm(total=0, unit="req", desc="profiling", disable=not progress)
        runner = Runner(session, info.url, group, s.vocab_size, block_size, num_kv_blocks=info.num_kv_blocks,
                        scrape_interval_s=s.scrape_interval_s, salt=meta["salt"], model=info.model,
                        on_done=lambda _row: bar.update(1))
        await runner.__aenter__()
        try:
            for index, phase in enumerate(PHASES):
                if phase not in phases:
                    continue
                rng = np.random.default_rng([s.seed, index])
                if phase == "idle":
                    units = plan_idle(ids, s, rng)
                elif phase == "prefix":
                    units = plan_prefix(ids, s, rng)
                elif phase == "concurrency":
                    units = plan_concurrency(ids, s, rng)
                elif phase == "frontend":
                    units = await _frontend_setup(meta, info.url)
                    units = frontend_cpu.plan_frontend(ids.request, s.frontend_scale) if units else []
                elif phase == "decode":
                    units = plan_decode_phase(ids, s)
                else:
                    cap = meta.get("capacity_rps")
                    if not cap:
                        if not out.exists():
                            raise ProfileError("the poisson phase needs the concurrency phase's capacity first")
                        cap = capacity_from_rows(pd.read_csv(out))
                        meta["capacity_rps"] = cap
                    units = plan_poisson(ids, s, rng, cap)
                for unit in units:
                    if unit.key in meta["units_done"]:
                        continue
                    if phase in LOADED_PHASES:
                        unit.keep_token_times = True
                    bar.total += len(unit.requests)
                    bar.set_description(f"profiling {unit.key}")
                    bar.refresh()
                    load_before = loadavg()
                    if phase == "frontend":
                        fe = meta["frontend_cpu"]
                        rows, record = await frontend_cpu.measure_unit(runner, unit, fe["pid"], session, info.url)
                        fe["units"][unit.key] = record
                    else:
                        rows = await runner.run_unit(unit)
                    if phase == "decode":
                        _record_decode_step(meta, runner, unit, s)
                    if phase in LOADED_PHASES:
                        _append_token_times(out, unit, runner)
                    _append(out, rows)
                    meta["units_done"].append(unit.key)
                    meta["unit_log"].append({"unit": unit.key, "requests": len(rows),
                                             "planned": len(unit.requests),
                                             "ok": sum(1 for r in rows if r["ok"]),
                                             "loadavg_before": load_before, "loadavg_after": loadavg(),
                                             "finished": utc_now()})
                    meta["next_request_id"], meta["next_prefix_id"] = ids.next_request, ids.next_prefix
                    _save_meta(out, meta)
                if phase == "concurrency" and out.exists():
                    meta["capacity_rps"] = capacity_from_rows(pd.read_csv(out))
                    _save_meta(out, meta)
                if phase == "frontend" and meta.get("frontend_cpu", {}).get("units"):
                    fe = meta["frontend_cpu"]
                    fe["estimate"] = frontend_cpu.estimate(fe["units"], fe["baseline_cpu_per_s"])
                    _save_meta(out, meta)
        finally:
            await runner.__aexit__(None, None, None)
            bar.close()
        meta["finished"] = utc_now()
        meta["scrape_failures"] = runner.scrape_failures
        _save_meta(out, meta)
    return out
