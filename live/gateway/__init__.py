"""The routing gateway: an OpenAI-compatible router running the simulator's strategies.

``python -m live.gateway --backends URL,URL --strategy least_load`` serves
``/v1/completions``, ``/v1/chat/completions``, ``/v1/models``, ``/health`` and its
own ``/metrics``. ``GatewayApp(GatewayConfig(...))`` is the ASGI app for running
it in-process; ``start_gateway`` runs one as a child process.
"""
from live.gateway.server import GatewayApp, GatewayConfig

__all__ = ["GatewayApp", "GatewayConfig"]
