"""The routing decision core, identical in simulation and live.

``RequestInfo`` and ``BackendSnapshot`` are what a router can know; a
``Strategy`` turns them into a choice; the ``Router`` keeps the router-side state
(in-flight counts, scrapes, prefix index) that both the simulator and the gateway
feed. Strategies are built by name from the registry: ``routing.build("least_load")``.
"""
try:
    import labcore as _labcore
except ModuleNotFoundError:  # an editable install made before labcore existed maps only the
    _labcore = None  # packages it knew: nothing compiled can be loaded, the .py files run
if _labcore is not None:
    # Before any submodule is imported: the hot modules load compiled when built and current.
    _labcore.install(__name__, __path__[0])

from routing.base import (  # noqa: E402
    Strategy, available, build, effective_parameters, parameters, register, validate,
)
from routing.router import BackendSpec, Decision, NoHealthyBackend, Router
from routing.types import BackendSnapshot, Outcome, RequestInfo, ScrapedMetrics

__all__ = [
    "BackendSnapshot", "BackendSpec", "Decision", "NoHealthyBackend", "Outcome",
    "RequestInfo", "Router", "ScrapedMetrics", "Strategy", "available", "build",
    "effective_parameters", "parameters", "register", "validate",
]
