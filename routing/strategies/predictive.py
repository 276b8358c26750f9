"""Routing on a learned latency prediction: ``predictive`` and ``online_linear``.

Both build one feature row per candidate backend from what the router sees (the
``BackendSnapshot`` plus the request's prompt length; see
``predictors.features``), predict a latency for each and pick the best. They are
pure decisions like every strategy: the model file is read once at construction,
``choose`` does no I/O, and ties are broken by the strategy's own seeded
generator, so a run is reproducible in the simulator and identical in the
gateway.

SLO headroom (``objective="slo_headroom"``): a backend's headroom is ``slo_ms``
minus the model's prediction (use a quantile model, e.g. p90, so the SLO is
compared with the tail). Among backends with headroom >= 0 the choice is a
seeded weighted draw, as in llm-d's SLO scorer: headrooms are normalised to
[0, 1] within that set and weighted 1 + 99 * h for ``headroom="most"`` (the
default: spread) or 1 + 99 * (1 - h) for ``"least"`` (pack onto backends closest
to the SLO, keeping roomier ones free; llm-d's default, which pays off when idle
replicas can be scaled in, not on the lab's fixed fleets). A draw rather than
the extreme, because always packing onto the tightest backend piles requests on
one replica whenever the model does not foresee the queue it builds (a tree
never predicts beyond its largest leaf). In a 600-request simulation of
``heterogeneous.toml`` at 24 req/s with a p90 tree and a 2.5 s SLO, TTFT p99 was
0.58 s with ``"most"``, 6.2 s with ``"least"`` and 80 s with a deterministic
tightest pick (least_load: 0.76 s). When no backend is predicted to meet the
SLO, the one with the most headroom (the smallest predicted violation) is chosen.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from predictors import load_model
from predictors.online import OnlineLinearPredictor
from routing.base import Strategy, register
from routing.types import BackendSnapshot, Outcome, RequestInfo

OBJECTIVES = ("ttft", "e2el", "slo_headroom")
ONLINE_OBJECTIVES = ("ttft", "e2el")
HEADROOM_PICKS = ("least", "most")


def snapshot_rows(request: RequestInfo, backends: Sequence[BackendSnapshot]) -> list[tuple]:
    """One feature row per backend, in ``predictors.features.NUMERIC_FEATURES`` order."""
    n = request.input_len
    return [
        (n, b.prefix_hit_tokens, b.inflight_requests, b.inflight_tokens,
         b.running, b.waiting, b.kv_usage, b.scrape_age_s)
        for b in backends
    ]


def pick_lowest(values: list[float], rng) -> int:
    """Position of the smallest value; ties broken by ``rng`` (only drawn on a tie)."""
    best = min(values)
    first = values.index(best)
    if values.count(best) == 1:
        return first
    ties = [i for i, v in enumerate(values) if v == best]
    return ties[rng.randrange(len(ties))]


def weighted_draw(headroom: list[float], favour_least: bool, rng) -> int:
    """Draw a position with weight 1 + 99 * (1 - h) (or 1 + 99 * h), h the headroom in [0, 1]."""
    if len(headroom) == 1:
        return 0
    lo, hi = min(headroom), max(headroom)
    span = hi - lo
    norm = [(h - lo) / span for h in headroom] if span > 0 else [0.5] * len(headroom)
    weights = [1.0 + 99.0 * ((1.0 - h) if favour_least else h) for h in norm]
    return rng.choices(range(len(weights)), weights=weights)[0]


def _choice(name: str, value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    return value


@register
class Predictive(Strategy):
    """Pick the backend with the best predicted latency (or SLO headroom) from a model file."""

    name = "predictive"
    needs_scrape = True
    needs_prefix_estimate = True

    def __init__(
        self,
        *,
        model: str,
        seed: int = 0,
        objective: str = "ttft",
        slo_ms: float | None = None,
        headroom: str = "most",
    ) -> None:
        super().__init__(seed=seed)
        self.objective = _choice("objective", objective, OBJECTIVES)
        self.headroom = _choice("headroom", headroom, HEADROOM_PICKS)
        if not model:
            raise ValueError(
                "strategy 'predictive' needs `model`: the path of a file written by "
                "`python -m predictors train`"
            )
        self.model_path = str(model)
        self.model = load_model(model)
        if self.objective != "slo_headroom" and self.model.target != self.objective:
            raise ValueError(
                f"objective {self.objective!r} needs a model of target {self.objective!r}; "
                f"{model} predicts {self.model.target!r}"
            )
        if self.objective == "slo_headroom":
            if slo_ms is None or not slo_ms > 0:
                raise ValueError(f"objective 'slo_headroom' needs a positive slo_ms, got {slo_ms!r}")
        self.slo_ms = slo_ms
        self._slo_s = math.inf if slo_ms is None else float(slo_ms) / 1000.0

    def predict(self, request: RequestInfo, backends: Sequence[BackendSnapshot]) -> np.ndarray:
        """The model's prediction (seconds) for each backend."""
        return self.model.predict_rows(snapshot_rows(request, backends), [b.group for b in backends])

    def choose(self, request: RequestInfo, backends: Sequence[BackendSnapshot]) -> int:
        pred = self.predict(request, backends).tolist()
        if self.objective != "slo_headroom":
            return pick_lowest(pred, self.rng)
        slo = self._slo_s
        within = [i for i, p in enumerate(pred) if p <= slo]
        if not within:
            return pick_lowest(pred, self.rng)
        return within[weighted_draw([slo - pred[i] for i in within], self.headroom == "least", self.rng)]


@register
class OnlineLinear(Strategy):
    """One global linear model for the fleet: predicts with it and learns in ``observe``.

    Cold start (no ``model``): every prediction is 0 until the first outcomes
    arrive, so early choices are seeded random ties; ``quantile`` and
    ``forgetting`` (default 0.998) configure the new model. A warm-start ``model``
    file (``python -m predictors train --model online_linear``) brings its target,
    quantile and forgetting factor (``forgetting``, if given, replaces the
    latter). ``explore`` is the probability of a uniformly random choice
    (seeded), for fleets where the model would otherwise never see some backends
    under load.
    """

    name = "online_linear"
    needs_scrape = True
    needs_prefix_estimate = True

    def __init__(
        self,
        *,
        seed: int = 0,
        model: str | None = None,
        objective: str = "ttft",
        quantile: float | None = None,
        forgetting: float | None = None,
        explore: float = 0.0,
    ) -> None:
        super().__init__(seed=seed)
        self.objective = _choice("objective", objective, ONLINE_OBJECTIVES)
        if not 0.0 <= explore < 1.0:
            raise ValueError(f"explore must be in [0, 1), got {explore!r}")
        self.explore = float(explore)
        if model:
            self.model = load_model(model, kind="online_linear")
            if self.model.target != self.objective:
                raise ValueError(
                    f"objective {self.objective!r} needs a model of target {self.objective!r}; "
                    f"{model} predicts {self.model.target!r}"
                )
            if quantile is not None and quantile != self.model.quantile:
                raise ValueError(
                    f"quantile {quantile!r} differs from the warm-start file's {self.model.quantile!r}; "
                    "leave it out or train another file"
                )
            if forgetting is not None:
                self.model.forgetting = float(forgetting)  # adapt faster or slower from here on
        else:
            self.model = OnlineLinearPredictor(
                target=self.objective, quantile=quantile, seed=seed,
                **({} if forgetting is None else {"forgetting": forgetting}),
            )
        self._pending: dict[int, np.ndarray] = {}

    def choose(self, request: RequestInfo, backends: Sequence[BackendSnapshot]) -> int:
        model = self.model
        groups = [b.group for b in backends]
        model.ensure_groups(groups)
        raw, tail = model.encoder.split_rows(snapshot_rows(request, backends), groups)
        if self.explore and self.rng.random() < self.explore:
            pos = self.rng.randrange(len(backends))
        else:
            pos = pick_lowest(model.predict_split(raw, tail).tolist(), self.rng)
        self._pending[request.request_id] = np.concatenate((raw[pos], tail[pos]))
        return pos

    def observe(self, outcome: Outcome) -> None:
        # Always drop the stored features, failed requests included: nothing leaks.
        z = self._pending.pop(outcome.request_id, None)
        if z is None or not outcome.ok:
            return
        y = outcome.ttft_s if self.objective == "ttft" else outcome.e2el_s
        if math.isfinite(y):
            self.model.update_encoded(z, y)

    @property
    def pending(self) -> int:
        """Requests chosen but not yet observed."""
        return len(self._pending)
