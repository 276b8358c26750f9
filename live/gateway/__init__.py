"""The routing gateway: an OpenAI-compatible router running the simulator's strategies.

``python -m live.gateway --backends URL,URL --strategy least_load`` serves
``/v1/completions``, ``/v1/chat/completions``, ``/v1/models``, ``/health`` and its
own ``/metrics``. In-process: ``async with serve_gateway(GatewayConfig(...)) as gw``
(``gw.url``, ``gw.fleet``, ``gw.metrics``); as a child process:
``live.gateway.spawn.start_gateway``.
"""
from live.gateway.server import Gateway, GatewayConfig, serve_gateway

__all__ = ["Gateway", "GatewayConfig", "serve_gateway"]
