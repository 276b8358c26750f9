"""How does a real vLLM's decode step grow with the batch? Flat to a knee, or linear from one?

The step model's ``matmul_floor_s`` (``sim.latency``) says a decode step costs
about the same for one sequence as for a few: the weight matmuls stream their
weights once per step, and until the batch's arithmetic outlasts that read,
more sequences are nearly free. This benchmark measures it on a running server:
for each batch size ``n`` it sends ``n`` requests at once (``--prompt-len``
token prompts, unique, ``--output-len`` tokens each, ``ignore_eos``) and takes
the median gap between streamed tokens over the window where all ``n`` decode
together (after the last first token, before the first finish), which is one
decode step of ``n`` sequences plus nothing else. It prints the step per batch
size and, per pair of neighbours, the cost of each added sequence; and, given a
fitted profile (``--profile``), what that profile predicts for the same steps
(the engine's step only: the front end works on another core).

    python -m calibrate serve --shape small --port 8000 --cores 0 &
    python benchmarks/decode_batch_knee.py --url http://127.0.0.1:8000 --repeats 2 \\
        --profile sim/profiles/cpu-small.json --json runs/decode-knee-small.json

Measure on a quiet machine (``python -m calibrate.quiet -- ...``). A request
that fails ends the run with its error and exit status 1 (the step of a batch
missing a member would be another batch's); the batches measured before it are
printed and written.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from calibrate.decode_steps import predicted_step, together_gaps  # noqa: E402
from calibrate.modeldir import TOKENIZER_VOCAB_SIZE  # noqa: E402
from calibrate.prompts import prompt_tokens  # noqa: E402
from live.transport.client import stream_completion  # noqa: E402

DEFAULT_BATCHES = "1,2,3,4,6,8,12,16,24,32"


async def batch_step(session, url: str, model: str | None, n: int, first_id: int, prompt_len: int,
                     output_len: int) -> dict:
    """One batch of ``n`` requests sent at once: its median step while all ``n`` decode."""
    prompts = [prompt_tokens(first_id + i, prompt_len, vocab_size=TOKENIZER_VOCAB_SIZE).tolist()
               for i in range(n)]
    results = await asyncio.gather(*[stream_completion(session, url, prompt=p, max_tokens=output_len,
                                                       model=model) for p in prompts])
    failed = [r.error or f"HTTP {r.status}" for r in results if not r.ok]
    if failed:
        raise RuntimeError(f"a request of the batch of {n} failed: {failed[0]}")
    times = [[r.start + c for c in r.chunk_times_s] for r in results]
    gaps = together_gaps(times)
    if not gaps:
        raise RuntimeError(f"the batch of {n} never decoded together; raise --output-len")
    return {"n": n, "step_ms": statistics.median(gaps) * 1e3, "gaps": len(gaps),
            "tpot_ms": statistics.median(r.e2el_s - r.ttft_s for r in results) / (output_len - 1) * 1e3}


async def run(args, batches: list[int], rows: list[dict]) -> None:
    """Every batch of every repeat, appended to ``rows`` as it is measured."""
    next_id = 1_000_000  # ids apart from the calibration's prompts: no prefix hits
    async with aiohttp.ClientSession() as session:
        await batch_step(session, args.url, args.model, 2, next_id, args.prompt_len, args.output_len)  # warm-up
        next_id += 2
        for rep in range(args.repeats):
            for n in batches:
                row = await batch_step(session, args.url, args.model, n, next_id, args.prompt_len, args.output_len)
                next_id += n
                row["repeat"] = rep
                rows.append(row)
                print(f"repeat {rep + 1}/{args.repeats}  batch {n:3d}: step {row['step_ms']:7.2f} ms "
                      f"({row['gaps']} gaps)", flush=True)


def summarise(rows: list[dict], profile=None, prompt_len: int = 32, output_len: int = 64) -> list[dict]:
    """Per batch size: the median step over repeats, the added cost per sequence from the
    previous size, and the profile's step for the same batch mid-run (if given)."""
    out, prev = [], None
    for n in sorted({r["n"] for r in rows}):
        step = statistics.median(r["step_ms"] for r in rows if r["n"] == n)
        row = {"n": n, "step_ms": round(step, 2)}
        if prev is not None:
            row["per_added_seq_ms"] = round((step - prev[1]) / (n - prev[0]), 3)
        if profile is not None:
            row["profile_step_ms"] = round(predicted_step(profile.model, n, prompt_len + output_len // 2) * 1e3, 2)
        out.append(row)
        prev = (n, step)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="a running vLLM (or OpenAI-compatible) server, e.g. "
                                                "http://127.0.0.1:8000")
    p.add_argument("--model", default=None, help="model name to request (default: the server's only one)")
    p.add_argument("--batches", default=DEFAULT_BATCHES, help=f"batch sizes (default: {DEFAULT_BATCHES})")
    p.add_argument("--repeats", type=int, default=2, help="passes over the batch sizes (default: 2)")
    p.add_argument("--prompt-len", type=int, default=32, help="prompt tokens per request (default: 32)")
    p.add_argument("--output-len", type=int, default=64, help="output tokens per request (default: 64)")
    p.add_argument("--profile", default=None, help="a latency profile (name or file) to set beside the steps")
    p.add_argument("--json", type=Path, help="write every batch and the summary here")
    args = p.parse_args(argv)
    try:
        batches = sorted({int(x) for x in args.batches.split(",") if x.strip()})
    except ValueError:
        p.error(f"--batches takes comma-separated whole numbers, got {args.batches!r}")
    if not batches or batches[0] < 1 or args.repeats < 1 or args.prompt_len < 1 or args.output_len < 8:
        p.error("batch sizes and --repeats must be >= 1, --prompt-len >= 1, --output-len >= 8")
    profile = None
    if args.profile:
        from sim.latency import ProfileError, load_profile
        try:
            profile = load_profile(args.profile)
        except ProfileError as exc:
            p.error(str(exc))
    rows: list[dict] = []
    error = None
    try:
        asyncio.run(run(args, batches, rows))
    except (RuntimeError, aiohttp.ClientError, OSError) as exc:
        error = f"{type(exc).__name__}: {exc}"
        print(f"error: {error} (the {len(rows)} batch(es) measured before it are kept)", file=sys.stderr)
    summary = summarise(rows, profile, args.prompt_len, args.output_len)
    for row in summary:
        extra = f"  +{row['per_added_seq_ms']:.2f} ms/seq" if "per_added_seq_ms" in row else ""
        model = f"  profile {row['profile_step_ms']:.2f} ms" if "profile_step_ms" in row else ""
        print(f"batch {row['n']:3d}: {row['step_ms']:7.2f} ms{extra}{model}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "summary": summary, "error": error, "command": sys.argv},
                                        indent=1) + "\n")
    return 1 if error else 0


if __name__ == "__main__":
    raise SystemExit(main())
