"""``python -m live.gateway``: run the routing gateway in front of vLLM backends."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import routing
from live.gateway.server import (
    BODY_BYTES_PER_TOKEN, DEFAULT_MAX_BODY_BYTES, Gateway, GatewayConfig,
)
from live.logfmt import LEVELS
from live.router import KV_RESYNC_MODES
from live.logfmt import setup as setup_logging
from live.transport.http import ClientLimits, default_max_connections, main_serve


def parse_param(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as JSON when it parses (numbers, booleans,
    null, strings in quotes), else kept as a string (a model path, for instance)."""
    import json

    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--param expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise argparse.ArgumentTypeError(f"--param has an empty key: {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value


def split_urls(text: str) -> list[str]:
    urls = [u.strip().rstrip("/") for u in text.split(",") if u.strip()]
    if not urls:
        raise argparse.ArgumentTypeError("--backends needs at least one URL")
    return urls


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m live.gateway",
        description=(
            "OpenAI-compatible gateway that routes each request to one of several vLLM (or "
            "emulator) backends with a routing strategy: the same strategy objects the "
            "simulator ranks. Streams pass through chunk by chunk; failures before the first "
            "byte fail over; failing backends are ejected and probed back in."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--backends", type=split_urls, required=True,
                   help="comma-separated backend base URLs, e.g. "
                        "http://127.0.0.1:8001,http://127.0.0.1:8002")
    p.add_argument("--names", default=None,
                   help="comma-separated backend names for metrics (default backend-0, backend-1, ...)")
    p.add_argument("--strategy", default="round_robin",
                   help=f"routing strategy: one of {', '.join(routing.available())}")
    p.add_argument("--param", action="append", type=parse_param, default=[], metavar="KEY=VALUE",
                   help="a strategy parameter (repeatable); values are read as JSON when they "
                        "parse, e.g. --param objective='\"ttft\"' or --param model=path/to/model")
    p.add_argument("--seed", type=int, default=0, help="seed of the strategy's random choices")
    p.add_argument("--scrape-interval", type=float, default=0.5,
                   help="seconds between scrapes of each backend's /metrics (only strategies "
                        "that read scraped metrics trigger scraping)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (loopback by default; 0.0.0.0 exposes the gateway)")
    p.add_argument("--port", type=int, default=8080, help="TCP port; 0 picks a free one")
    # The keys' defaults are read from the environment in config_from_args, never shown.
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on /v1/* (when unset: "
                        "$GATEWAY_API_KEY; neither: no authentication)")
    p.add_argument("--backend-api-key", default=None,
                   help="bearer token sent to the backends (vLLM --api-key; when unset: "
                        "$BACKEND_API_KEY)")
    p.add_argument("--max-retries", type=int, default=2,
                   help="failovers per request before the first byte (connect error, 5xx, timeout)")
    p.add_argument("--tokenizer", default="deepseek",
                   help="tokenizer for text prompts (token counts and prefix hashes); token-id "
                        "prompts are used as given")
    p.add_argument("--block-size", type=int, default=16,
                   help="KV block size of the backends, for prefix hashing")
    p.add_argument("--prefix-index-blocks", type=_index_blocks, default=None, metavar="N[,N...]",
                   help="capacity in blocks of the router's approximate index of each backend's "
                        "prefix cache: one number for all, or one per backend (their KV-cache "
                        "blocks, as the simulator sizes it); default 31250, llm-d's when the "
                        "capacity is unknown")

    lim = p.add_argument_group("limits (what one request or client may take)")
    lim.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                     help="largest request body accepted; larger bodies get 413 (the default "
                          f"fits a {DEFAULT_MAX_BODY_BYTES // BODY_BYTES_PER_TOKEN:,}-token context "
                          f"at {BODY_BYTES_PER_TOKEN} bytes a token; a warning at start names a "
                          "backend whose max_model_len needs more)")
    lim.add_argument("--max-prompt-tokens", type=int, default=None, metavar="N",
                     help="refuse (400) prompts over N tokens, after at most N tokens of "
                          "tokenizing (when unset: the largest max_model_len the backends report "
                          "on /v1/models, twice that for text prompts since the gateway's "
                          "tokenizer may count differently; 0: no check)")
    lim.add_argument("--max-client-connections", type=int, default=default_max_connections(),
                     help="open client connections at once; more are answered 503 and closed "
                          "(by default half this process's open-file limit)")
    lim.add_argument("--client-header-timeout", type=float, default=ClientLimits.header_timeout_s,
                     metavar="S", help="seconds a client may take to send a request's headers "
                                       "(408 and close beyond; 0: none)")
    lim.add_argument("--client-body-timeout", type=float, default=ClientLimits.body_timeout_s,
                     metavar="S", help="seconds a client may take to send a request's body after "
                                       "its headers (408 and close beyond; 0: none)")
    lim.add_argument("--client-idle-timeout", type=float, default=ClientLimits.idle_timeout_s,
                     metavar="S", help="seconds a keep-alive client connection may sit without a "
                                       "request before it is closed (0: never)")
    lim.add_argument("--max-connections", type=int, default=1024,
                     help="idle keep-alive connections kept per backend")

    up = p.add_argument_group("backend health (how a failed or stalled backend is found)")
    up.add_argument("--connect-timeout", type=float, default=5.0, metavar="S",
                    help="seconds to open a connection to a backend before failing over")
    up.add_argument("--first-byte-timeout", type=float, default=300.0, metavar="S",
                    help="streaming requests: seconds from sending to the backend's first body "
                         "byte (queueing and prefill) before failing over (0: none)")
    up.add_argument("--read-timeout", type=float, default=30.0, metavar="S",
                    help="streaming requests: seconds of silence between chunks after the first "
                         "before the stream is ended with an SSE error event (0: none)")
    up.add_argument("--request-timeout", type=float, default=600.0, metavar="S",
                    help="seconds a request may take upstream in total, every failover "
                         "included; when it runs out the request ends (504, or an SSE error "
                         "event mid-stream) without further failover (non-streaming requests "
                         "answer only at the end, so this is their bound)")
    up.add_argument("--health-interval", type=float, default=2.0, metavar="S",
                    help="seconds between /health probes of every backend taking traffic; one "
                         "failing --eject-after probes in a row is ejected, and its requests "
                         "still waiting for a first byte fail over at once (0: no probes)")
    up.add_argument("--probe-timeout", type=float, default=3.0, metavar="S",
                    help="seconds a /health probe may take before it counts as failed")
    up.add_argument("--eject-after", type=int, default=3,
                    help="consecutive failed requests (or probes) after which a backend is taken "
                         "out of rotation")
    up.add_argument("--probe-interval", type=float, default=1.0, metavar="S",
                    help="seconds between /health probes of an ejected backend; it returns at "
                         "the first 200")
    kv = p.add_argument_group(
        "KV-cache events (strategies that route on each backend's exact cache: precise_prefix, "
        "kv_cost, weighted with a precise scorer)")
    kv.add_argument("--kv-events", default="auto", metavar="auto|off|ENDPOINT,...",
                    help="where each backend publishes vLLM KV-cache events (--kv-events-config): "
                         "'auto' asks each backend's GET /kv_event_sources (vLLM 0.32, the "
                         "emulator); or one tcp://host:port per backend, in --backends order "
                         "('' for one without; a * host means the backend's host); 'off': none "
                         "(the approximate index, counted as precise fallbacks)")
    kv.add_argument("--kv-events-replay", default=None, metavar="ENDPOINT,...",
                    help="with explicit --kv-events: each backend's replay endpoint (vLLM's "
                         "replay_endpoint), used to recover batches lost in a gap")
    kv.add_argument("--kv-events-topic", default="", help="the publishers' topic (vLLM's topic)")
    kv.add_argument("--kv-events-resync", choices=KV_RESYNC_MODES, default="replay",
                    help="a stream that cannot be repaired by replay: 'replay' waits on the "
                         "approximate index for a reset or restart of the backend; 'reset' asks "
                         "the backend to reset its prefix cache (POST /reset_prefix_cache, vLLM "
                         "needs VLLM_SERVER_DEV_MODE=1) until the mirror is exact again")
    p.add_argument("--log-level", choices=LEVELS, default="info",
                   help="info: one line per backend state change, failed request and refusal; "
                        "warning: failures only; debug: more")
    return p


def _endpoints(text: str | None) -> list[str] | None:
    return None if text is None else [e.strip() for e in text.split(",")]


def _index_blocks(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or N,N,... whole numbers of blocks; got {text!r}") from None
    if any(k < 1 for k in sizes):
        raise argparse.ArgumentTypeError(f"index capacities must be >= 1 block; got {text!r}")
    return sizes


def config_from_args(args: argparse.Namespace) -> GatewayConfig:
    names = [n.strip() for n in args.names.split(",")] if args.names else None
    kv_events = args.kv_events if args.kv_events in ("auto", "off") else _endpoints(args.kv_events)
    return GatewayConfig(
        backends=args.backends, strategy=args.strategy, params=dict(args.param), seed=args.seed,
        names=names, scrape_interval_s=args.scrape_interval,
        api_key=args.api_key or os.environ.get("GATEWAY_API_KEY") or None,
        backend_api_key=args.backend_api_key or os.environ.get("BACKEND_API_KEY") or None,
        max_body_bytes=args.max_body_bytes,
        max_retries=args.max_retries, eject_after=args.eject_after,
        probe_interval_s=args.probe_interval, tokenizer=args.tokenizer,
        block_size=args.block_size, prefix_index_blocks=args.prefix_index_blocks,
        request_timeout_s=args.request_timeout,
        connect_timeout_s=args.connect_timeout, first_byte_timeout_s=args.first_byte_timeout,
        read_timeout_s=args.read_timeout, health_interval_s=args.health_interval,
        probe_timeout_s=args.probe_timeout, max_prompt_tokens=args.max_prompt_tokens,
        max_connections=args.max_connections, kv_events=kv_events,
        kv_events_replay=_endpoints(args.kv_events_replay), kv_events_topic=args.kv_events_topic,
        kv_events_resync=args.kv_events_resync,
        client=ClientLimits(header_timeout_s=args.client_header_timeout,
                            body_timeout_s=args.client_body_timeout,
                            idle_timeout_s=args.client_idle_timeout,
                            max_connections=args.max_client_connections),
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        gateway = Gateway(config_from_args(args))
    except ValueError as exc:
        parser.error(str(exc))
    return main_serve(parser, gateway, args.host, args.port)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
