"""``python -m live.gateway``: run the routing gateway in front of vLLM backends."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import routing
from live.transport.http import main_serve
from live.gateway.server import Gateway, GatewayConfig


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
    p.add_argument("--api-key", default=os.environ.get("GATEWAY_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1/* (default: $GATEWAY_API_KEY; "
                        "unset: no authentication)")
    p.add_argument("--backend-api-key", default=os.environ.get("BACKEND_API_KEY"),
                   help="bearer token sent to the backends (vLLM --api-key; default: "
                        "$BACKEND_API_KEY)")
    p.add_argument("--max-body-bytes", type=int, default=16 * 1024 * 1024,
                   help="largest request body accepted; larger bodies get 413")
    p.add_argument("--max-retries", type=int, default=2,
                   help="failovers per request before the first byte (connect error, 5xx)")
    p.add_argument("--eject-after", type=int, default=3,
                   help="consecutive failures after which a backend is taken out of rotation")
    p.add_argument("--probe-interval", type=float, default=1.0,
                   help="seconds between /health probes of ejected backends")
    p.add_argument("--tokenizer", default="deepseek",
                   help="tokenizer for text prompts (token counts and prefix hashes); token-id "
                        "prompts are used as given")
    p.add_argument("--block-size", type=int, default=16,
                   help="KV block size of the backends, for prefix hashing")
    p.add_argument("--request-timeout", type=float, default=600.0,
                   help="seconds a request may take upstream in total")
    p.add_argument("--read-timeout", type=float, default=0.0,
                   help="seconds of upstream silence after which a request fails (0: none); "
                        "before the first byte this fails over")
    p.add_argument("--max-connections", type=int, default=1024,
                   help="keep-alive connections per backend")
    return p


def config_from_args(args: argparse.Namespace) -> GatewayConfig:
    names = [n.strip() for n in args.names.split(",")] if args.names else None
    return GatewayConfig(
        backends=args.backends, strategy=args.strategy, params=dict(args.param), seed=args.seed,
        names=names, scrape_interval_s=args.scrape_interval, api_key=args.api_key or None,
        backend_api_key=args.backend_api_key or None, max_body_bytes=args.max_body_bytes,
        max_retries=args.max_retries, eject_after=args.eject_after,
        probe_interval_s=args.probe_interval, tokenizer=args.tokenizer,
        block_size=args.block_size, request_timeout_s=args.request_timeout,
        read_timeout_s=args.read_timeout, max_connections=args.max_connections,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        gateway = Gateway(config_from_args(args))
    except ValueError as exc:
        parser.error(str(exc))
    return main_serve(parser, gateway, args.host, args.port)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
