"""vLLM's API-server front end: one FIFO server in front of and behind the engine.

What it models, from vLLM 0.32's source:

- One API-server process runs one asyncio event loop. On that loop every HTTP
  request is parsed and validated (``entrypoints/openai/completion/serving.py``),
  its prompt rendered and turned into an engine request
  (``v1/engine/input_processor.py``) and sent to the EngineCore process over
  ZMQ (``AsyncLLM.add_request`` in ``v1/engine/async_llm.py``). A request
  reaches the scheduler only after that work: *queueing in front of the engine*.
- The EngineCore process steps the model and does not wait for the front end:
  after each step it queues one batch of outputs (``EngineCoreOutputs``).
- On the same loop, ``AsyncLLM``'s ``output_handler`` task pulls each batch and
  runs ``OutputProcessor.process_outputs`` over it (``v1/engine/output_processor.py``:
  incremental detokenisation and a ``RequestOutput`` per request, in chunks of
  ``VLLM_V1_OUTPUT_PROC_CHUNK_SIZE`` = 128); each request's stream generator then
  serialises an SSE chunk (``model_dump_json``) that the HTTP server writes. A
  step's tokens reach the clients only after that work.

All of it runs on one thread, in the order it arrives: a FIFO single server
whose jobs are

    input job,  one per request:        input_s + input_token_s * prompt tokens
    output job, one per engine step:    output_step_s + output_token_s * tokens emitted

A request enters the engine when its input job ends; the tokens of a step reach
their clients when that step's output job ends. While the loop keeps up, this
adds a fixed delay to TTFT and none to TPOT; when it falls behind (many streams,
a burst of arrivals), requests queue in front of the engine and tokens arrive
late and bunched, as they do from a real vLLM.

``FrontEnd`` keeps the server's state on a clock it is given (no clock of its
own): the simulator (``sim.cluster``) and the emulator's engine driver both
advance it, so the two modes share one model. Decode runs (several identical
steps planned at once, see ``sim.engine.Plan``) are processed in closed form:
with step ends ``e_j`` convex in ``j`` and a constant job cost ``c``, the server
is free after step ``j`` at ``max(b + (j - j0) c, e_{j0+1} + (j - j0) c, e_j + c)``
from its state ``b`` after step ``j0``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

#: The front end's coefficients, in seconds (see the module docstring).
FRONT_END_COEFFICIENTS = ("input_s", "input_token_s", "output_step_s", "output_token_s")


class FrontEndError(ValueError):
    """A front-end model with a bad coefficient."""


@dataclass(frozen=True, slots=True)
class FrontEndModel:
    """Costs of the API server's work; all zero (the default) means no front end."""

    input_s: float = 0.0
    input_token_s: float = 0.0
    output_step_s: float = 0.0
    output_token_s: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise FrontEndError(f"front-end coefficient {f.name} must be a finite number >= 0, got {v!r}")

    @property
    def enabled(self) -> bool:
        return any(getattr(self, name) > 0 for name in FRONT_END_COEFFICIENTS)

    def input_cost(self, prompt_tokens: int) -> float:
        return self.input_s + self.input_token_s * prompt_tokens

    def output_cost(self, tokens: int) -> float:
        return self.output_step_s + self.output_token_s * tokens

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict, origin: str = "front_end") -> FrontEndModel:
        if not isinstance(doc, dict):
            raise FrontEndError(f"{origin}: a front-end model is an object of {', '.join(FRONT_END_COEFFICIENTS)}")
        unknown = sorted(set(doc) - set(FRONT_END_COEFFICIENTS))
        if unknown:
            raise FrontEndError(f"{origin}: unknown coefficient(s) {unknown}; allowed: "
                                f"{', '.join(FRONT_END_COEFFICIENTS)}")
        try:
            return cls(**{k: float(v) for k, v in doc.items()})
        except (TypeError, ValueError) as exc:
            raise FrontEndError(f"{origin}: {exc}") from None


def tokens_per_step(plan) -> int:
    """How many tokens each step of ``plan`` (a ``sim.engine.Plan``) emits.

    A decode run emits one token per scheduled sequence per step; a single step
    emits one for every decode and every prefill it completes (the rule of
    ``Engine.complete``), plus one per decode-group member.
    """
    if plan.is_run:
        return plan.num_tokens
    n = plan.group_size
    for req, new in plan.scheduled:
        if req.num_computed + new >= req.prompt_len + req.num_output:
            n += 1
    return n


class FrontEnd:
    """One backend's API-server loop, advanced by the caller's clock.

    ``track(start, plan)`` announces the engine's plan in progress; ``admit``
    (a request arriving) first queues the output jobs of the plan's steps that
    ended by then, so jobs are served in the order they arrived; ``complete``
    queues the outputs of the plan's first ``steps`` steps and says when the
    last of them reaches the clients.
    """

    __slots__ = ("model", "free_at", "_start", "_plan", "_done", "_cost", "jobs")

    def __init__(self, model: FrontEndModel) -> None:
        self.model = model
        self.free_at = -math.inf
        self._start = 0.0
        self._plan = None
        self._done = 0
        self._cost = 0.0
        #: Jobs served so far (input and output), for tests and diagnostics.
        self.jobs = 0

    def track(self, start: float, plan) -> None:
        """The engine started ``plan`` at ``start``; its steps' outputs queue as they end."""
        self._start, self._plan, self._done = start, plan, 0
        self._cost = self.model.output_cost(tokens_per_step(plan))

    def admit(self, t: float, prompt_tokens: int) -> float:
        """A request reaches the API server at ``t``: when it reaches the engine."""
        self._advance(t)
        start = t if t > self.free_at else self.free_at
        self.free_at = start + self.model.input_cost(prompt_tokens)
        self.jobs += 1
        return self.free_at

    def complete(self, steps: int) -> float:
        """The tracked plan's first ``steps`` steps ended: when the last one's tokens are delivered."""
        plan = self._plan
        if plan is None:
            raise RuntimeError("complete() without a tracked plan")
        self._process(steps)
        if steps >= plan.steps:
            self._plan = None
        return self.free_at

    def _advance(self, t: float) -> None:
        plan = self._plan
        if plan is not None:
            done = plan.steps_done_by(t - self._start)
            if done > self._done:
                self._process(done)

    def _process(self, upto: int) -> None:
        """Serve the output jobs of steps ``_done + 1 .. upto`` of the tracked plan (closed form)."""
        j0 = self._done
        if upto <= j0:
            return
        plan, c, s = self._plan, self._cost, self._start
        k = upto - j0
        first_end = s + plan.time_of(j0 + 1)
        last_end = s + plan.time_of(upto)
        self.free_at = max(self.free_at + k * c, first_end + k * c, last_end + c)
        self._done = upto
        self.jobs += k
