"""Step time from batch composition, and the latency profiles that parameterise it.

One engine step runs the model once over every token the scheduler picked. Its
duration is modelled as

    t = step_s                                  fixed cost (launch, sampling, scheduler)
      + token_s        * T                      weight matmuls, per scheduled token
      + seq_s          * S                      per scheduled sequence
      + prefill_attn_s * sum_prefill n*(p + (n+1)/2)   attention of prefill chunks
      + decode_attn_s  * sum_decode  (p + 1)           attention of decodes over their context

where T is the number of scheduled tokens, S the number of scheduled sequences,
and for each request n is its chunk of new tokens and p the tokens it already had
computed (cached or earlier chunks). The prefill term is the number of (query,
key) pairs of causal attention over the chunk; the decode term is each decode's
context length. This is the decomposition Vidur and BLIS use (linear in tokens,
quadratic attention for prefill, linear attention for decode), with the few
coefficients a profile can fit from measurements.

A fitted profile may add one roofline term, ``matmul_floor_s``: the weight
matmuls of a step (``token_s`` per token, and ``seq_s`` per sequence, which on
the CPU shapes is mostly the vocabulary projection) stream their weights from
memory once per step however few tokens they multiply, so they take at least
that long:

    t = step_s + max(matmul_floor_s, token_s * T + seq_s * S) + the attention terms

A decode step then costs the same for one sequence as for a few, and grows
linearly only past the knee, as measured on vLLM-CPU (docs/calibration.md: the
`small` shape's decode step is 45-46 ms for 1-3 sequences and adds 2.0 ms per
sequence beyond 4). A prefill step is far past the knee, so the floor leaves it
alone. ``matmul_floor_s = 0`` is the linear form above.

A fitted profile may also carry ``single_row_s``, of either sign, added to a step
that computes exactly one token (a lone decode). Such a step's matmuls multiply a
single row, which BLAS libraries may run as a matrix-vector product rather than a
matrix product (a likely cause, not verified here); whatever the cause, it sits off
the line through the batches. Timed steps measured it 7.5%
below that line for ``small`` on an AMD EPYC host and 6-7% above it on an Intel
Xeon host, as profiling's directly measured one-sequence decode steps did
(docs/calibration.md, section 4, item 8). Without it, one line through every batch
size prices lone decodes too high and batches of two to eight too low, or the
reverse.

Derived profiles (``sim.profiles``) add roofline terms, all zero in fitted
profiles, so those keep the linear form above exactly:

    matmuls = max(weight_s + expert_s * touched(T),  token_s * T)
    spill   = spill_token_s * max(0, T - spill_tokens)
    t       = max(prefill_floor_s if the step prefills, step_s + matmuls + spill + the other terms)

The matmuls of a step stream every weight they use from memory once
(``weight_s``) and do ``token_s`` of arithmetic per token; the slower of the
two sets their time (the roofline). For a mixture-of-experts model only the
experts some token was routed to are read: with ``experts`` routed experts of
which each token picks ``experts_per_token``, ``touched(T) = 1 - (1 - k/E)**T``
is the expected fraction of them a step of T tokens reads (tokens routed
uniformly), and ``expert_s`` is the time to read all of them.
``prefill_floor_s`` is the least a step that computes a prompt chunk takes
(a launch-bound floor). ``spill`` prices the tokens of a step beyond
``spill_tokens``, the most whose tensor-parallel all-reduce working set fits in
the GPU's L2 cache: beyond it each all-reduce runs from HBM and costs
``spill_token_s`` more per token (a hinge in T; zero without tensor
parallelism). A decode-only step of a fixed batch is still affine in
its context, so decode runs keep their closed form.

A decode-only batch that does not change lengthens by ``decode_attn_s * S`` per
step, so k steps take ``k*t0 + decode_attn_s*S*k*(k-1)/2`` in closed form: the
simulator's fast mode jumps over such runs in one event.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from sim.frontend import FrontEndError, FrontEndModel

#: Version 2 adds the optional ``front_end`` section (``sim.frontend``); a profile
#: without one is written as version 1, so readers of version 1 still read it.
PROFILE_SCHEMA_VERSION = 2
READABLE_SCHEMA_VERSIONS = (1, 2)
COEFFICIENTS = ("step_s", "token_s", "seq_s", "prefill_attn_s", "decode_attn_s")
#: Roofline terms of derived profiles (``sim.profiles``), and fitted profiles' ``matmul_floor_s``;
#: 0 where unused, and then not written.
ROOFLINE_TERMS = ("weight_s", "expert_s", "experts", "experts_per_token", "prefill_floor_s", "spill_tokens",
                  "spill_token_s", "matmul_floor_s")
#: Fitted profiles' signed correction of a step that computes a single token (``LatencyModel.single_row_s``);
#: 0 where unused, and then not written.
SIGNED_TERMS = ("single_row_s",)
#: The coefficients that are durations (the rest are counts: experts, tokens).
TIME_TERMS = COEFFICIENTS + ("weight_s", "expert_s", "prefill_floor_s", "spill_token_s", "matmul_floor_s",
                             "single_row_s")


class ProfileError(ValueError):
    """A latency profile is missing, malformed or of another schema version."""


@dataclass(frozen=True, slots=True)
class LatencyModel:
    """The step-time coefficients, in seconds. See the module docstring for the formula."""

    step_s: float
    token_s: float
    seq_s: float = 0.0
    prefill_attn_s: float = 0.0
    decode_attn_s: float = 0.0
    weight_s: float = 0.0
    expert_s: float = 0.0
    experts: int = 0
    experts_per_token: int = 0
    prefill_floor_s: float = 0.0
    spill_tokens: float = 0.0
    spill_token_s: float = 0.0
    #: Fitted profiles' roofline: the least the step's matmuls (token_s * T + seq_s * S) take.
    matmul_floor_s: float = 0.0
    #: Fitted profiles: added to a step that computes exactly one token (a lone decode), signed.
    single_row_s: float = 0.0

    def __post_init__(self) -> None:
        for name in COEFFICIENTS + ROOFLINE_TERMS:
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ProfileError(f"latency coefficient {name} must be a finite number >= 0, got {v!r}")
        if not (isinstance(self.single_row_s, (int, float)) and math.isfinite(self.single_row_s)):
            raise ProfileError(f"latency coefficient single_row_s must be a finite number, got {self.single_row_s!r}")
        if self.step_s + self.token_s + self.weight_s + self.matmul_floor_s <= 0:
            raise ProfileError("a latency model needs step_s, token_s, weight_s or matmul_floor_s > 0 "
                               "(steps must take time)")
        if self.matmul_floor_s > 0 and self.weight_s > 0:
            raise ProfileError("matmul_floor_s (a fitted profile's floor under token_s and seq_s) and weight_s "
                               "(a derived profile's floor under token_s) model the same weight reads: "
                               "give one of them")
        if self.expert_s > 0:
            e, k = self.experts, self.experts_per_token
            if not (isinstance(e, int) and isinstance(k, int) and 1 <= k <= e):
                raise ProfileError(
                    f"expert_s > 0 needs integer experts >= experts_per_token >= 1, got experts={e!r}, "
                    f"experts_per_token={k!r}"
                )
        if self.single_row_s and self.step_time(1, 1, 0.0, 0) <= 0:
            raise ProfileError(f"single_row_s = {self.single_row_s!r} makes a one-token step take no time: it may "
                               f"lower that step's cost, not cancel it")
        if self.spill_token_s > 0 and self.weight_s <= 0:
            # The spill term is evaluated on the roofline path only, which weight_s > 0 selects:
            # the linear path of fitted profiles stays as cheap as it was.
            raise ProfileError("spill_token_s > 0 belongs to a derived (roofline) model: it needs weight_s > 0")

    def step_time(
        self,
        num_tokens: int,
        num_seqs: int,
        prefill_attn_work: float,
        decode_context: int,
    ) -> float:
        """Duration of one step from its aggregate composition."""
        t = (
            self.step_s
            + self.token_s * num_tokens
            + self.seq_s * num_seqs
            + self.prefill_attn_s * prefill_attn_work
            + self.decode_attn_s * decode_context
        )
        if self.matmul_floor_s:
            matmul = self.token_s * num_tokens + self.seq_s * num_seqs
            if self.matmul_floor_s > matmul:
                t += self.matmul_floor_s - matmul
        if num_tokens == 1:
            t += self.single_row_s
        if not (self.weight_s or self.prefill_floor_s):
            return t  # a fitted model: the hot path stays as cheap as before
        memory = self.weight_s
        if self.expert_s:
            memory += self.expert_s * (1.0 - (1.0 - self.experts_per_token / self.experts) ** num_tokens)
        matmul = self.token_s * num_tokens
        if memory > matmul:
            t += memory - matmul
        if self.spill_token_s and num_tokens > self.spill_tokens:
            t += self.spill_token_s * (num_tokens - self.spill_tokens)
        if prefill_attn_work > 0 and t < self.prefill_floor_s:
            return self.prefill_floor_s
        return t

    def scaled(self, factor: float) -> LatencyModel:
        """Every duration (``TIME_TERMS``) times ``factor``; counts (experts, tokens) kept."""
        return replace(self, **{t: getattr(self, t) * factor for t in TIME_TERMS})

    def prefill_work(self, new_tokens: int, computed: int) -> float:
        """Causal attention pairs for a chunk of ``new_tokens`` after ``computed`` tokens."""
        return new_tokens * (computed + (new_tokens + 1) / 2.0)

    def decode_run(self, num_seqs: int, context_sum: int, steps: int) -> tuple[float, float, float]:
        """First step's duration, per-step increase, and total time of ``steps`` decode steps.

        The batch is ``num_seqs`` decodes whose contexts sum to ``context_sum`` at
        the first step; each step adds one token to each context.
        """
        first = self.step_time(num_seqs, num_seqs, 0.0, context_sum)
        delta = self.decode_attn_s * num_seqs
        total = steps * first + delta * steps * (steps - 1) / 2.0
        return first, delta, total

    def single_request(self, input_len: int, output_len: int, cached: int = 0,
                       max_num_batched_tokens: int = 1 << 30) -> tuple[float, float]:
        """Closed-form TTFT and TPOT of one request alone on an idle engine.

        The prompt (minus cached tokens) is prefilled in chunks of at most
        ``max_num_batched_tokens``; the step finishing the prompt emits the first
        token; each later token takes one decode step over a growing context.
        Used by tests and as a sanity check in calibration.
        """
        remaining = input_len - cached
        computed = cached
        ttft = 0.0
        while remaining > 0:
            n = min(remaining, max_num_batched_tokens)
            ttft += self.step_time(n, 1, self.prefill_work(n, computed), 0)
            computed += n
            remaining -= n
        if output_len <= 1:
            return ttft, math.nan
        _, _, total = self.decode_run(1, input_len + 1, output_len - 1)
        return ttft, total / (output_len - 1)


@dataclass(frozen=True)
class EngineDefaults:
    """Engine limits a profile's hardware implies (a scenario may override them)."""

    #: vLLM's ``num_gpu_blocks`` (the null block included, see ``sim.kv_cache``).
    num_kv_blocks: int
    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    #: Longest sequence vLLM would accept (0: not recorded). Informational: the
    #: engine model bounds sequences by its KV blocks, not by this.
    max_model_len: int = 0
    #: vLLM schedules the next step before applying the last one's output: its
    #: default on GPU, forced off on CPU (see ``sim.scheduler``).
    async_scheduling: bool = False

    def kv_blocks_at(self, block_size: int) -> int:
        """The KV capacity in blocks of ``block_size`` tokens (the capacity in tokens is kept)."""
        return self.num_kv_blocks * self.block_size // block_size


@dataclass(frozen=True)
class LatencyProfile:
    """A named, versioned latency model with where its numbers came from."""

    name: str
    model: LatencyModel
    engine: EngineDefaults
    description: str = ""
    hardware: str = ""
    served_model: str = ""
    provisional: bool = False
    jitter_cv: float = 0.0
    #: Fixed time per request outside engine steps (HTTP, tokenization, IPC to the
    #: engine): the simulator adds half before the request reaches the engine and
    #: half after each token, like a network hop, so it adds to TTFT and E2EL only.
    request_overhead_s: float = 0.0
    #: The API server's own work (``sim.frontend``): none unless a fit found it.
    front_end: FrontEndModel = FrontEndModel()
    source: dict[str, Any] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)

    def slowed(self, factor: float) -> LatencyProfile:
        """The same server on a machine ``factor`` times slower: every duration (step
        terms, overhead, front end) times ``factor``, every limit and count kept.

        ``calibrate check`` replays a load this way when its reference requests
        say the machine ran at another speed than when it was profiled.
        """
        if not (math.isfinite(factor) and factor > 0):
            raise ProfileError(f"a speed factor must be a finite number > 0, got {factor!r}")
        model = self.model.scaled(factor)
        front = type(self.front_end)(**{f.name: getattr(self.front_end, f.name) * factor
                                        for f in fields(self.front_end)})
        return replace(self, model=model, front_end=front, request_overhead_s=self.request_overhead_s * factor)

    def model_coefficients(self) -> dict[str, float]:
        """The coefficients as written to JSON: roofline terms only where non-zero,
        so fitted profiles keep their five-coefficient form."""
        coeffs = asdict(self.model)
        for name in ROOFLINE_TERMS + SIGNED_TERMS:
            if not coeffs[name]:
                del coeffs[name]
        return coeffs

    def engine_limits(self) -> dict[str, int]:
        limits = asdict(self.engine)
        if not limits["max_model_len"]:
            del limits["max_model_len"]
        if not limits["async_scheduling"]:
            del limits["async_scheduling"]  # the default (CPU); written where vLLM turns it on
        return limits

    def to_json(self) -> str:
        doc = {
            "schema_version": PROFILE_SCHEMA_VERSION if self.front_end.enabled else 1,
            "name": self.name,
            "description": self.description,
            "hardware": self.hardware,
            "served_model": self.served_model,
            "provisional": self.provisional,
            "coefficients": self.model_coefficients(),
            "jitter_cv": self.jitter_cv,
            "request_overhead_s": self.request_overhead_s,
            **({"front_end": self.front_end.to_dict()} if self.front_end.enabled else {}),
            "engine": self.engine_limits(),
            "source": self.source,
            "fit": self.fit,
        }
        return json.dumps(doc, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, origin: str = "<string>") -> LatencyProfile:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ProfileError(f"{origin}: not valid JSON ({exc})") from exc
        if not isinstance(doc, dict):
            raise ProfileError(f"{origin}: a latency profile is a JSON object")
        version = doc.get("schema_version")
        if version not in READABLE_SCHEMA_VERSIONS:
            raise ProfileError(
                f"{origin}: latency profile schema version {version!r}, this version reads "
                f"{', '.join(map(str, READABLE_SCHEMA_VERSIONS))}"
            )
        for key in ("name", "coefficients", "engine"):
            if key not in doc:
                raise ProfileError(f"{origin}: latency profile lacks {key!r}")
        coeffs = doc["coefficients"]
        if not isinstance(coeffs, dict):
            raise ProfileError(f"{origin}: 'coefficients' must be a JSON object")
        unknown = set(coeffs) - set(COEFFICIENTS + ROOFLINE_TERMS + SIGNED_TERMS)
        if unknown:
            raise ProfileError(
                f"{origin}: unknown coefficient(s) {sorted(unknown)}; allowed: "
                f"{', '.join(COEFFICIENTS + ROOFLINE_TERMS + SIGNED_TERMS)}"
            )
        try:
            engine = EngineDefaults(**doc["engine"])
        except TypeError as exc:
            raise ProfileError(f"{origin}: bad 'engine' section ({exc})") from exc
        jitter = float(doc.get("jitter_cv", 0.0))
        if not (0.0 <= jitter < 1.0):
            raise ProfileError(f"{origin}: jitter_cv must be in [0, 1), got {jitter}")
        overhead = float(doc.get("request_overhead_s", 0.0))
        if not (0.0 <= overhead < 60.0):
            raise ProfileError(f"{origin}: request_overhead_s must be in [0, 60) seconds, got {overhead}")
        try:
            front_end = FrontEndModel.from_dict(doc.get("front_end", {}), f"{origin}: front_end")
        except FrontEndError as exc:
            raise ProfileError(str(exc)) from None
        return cls(
            name=str(doc["name"]),
            model=LatencyModel(**coeffs),
            engine=engine,
            description=doc.get("description", ""),
            hardware=doc.get("hardware", ""),
            served_model=doc.get("served_model", ""),
            provisional=bool(doc.get("provisional", False)),
            jitter_cv=jitter,
            request_overhead_s=overhead,
            front_end=front_end,
            source=doc.get("source", {}),
            fit=doc.get("fit", {}),
        )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json())
        return path


PROFILE_DIR = "profiles"


def shipped_profiles() -> list[str]:
    """Names of the profiles that ship with the simulator."""
    folder = resources.files("sim") / PROFILE_DIR
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def load_profile(name_or_path: str | Path | dict) -> LatencyProfile:
    """A shipped profile by name, a profile JSON file by path, or a derived profile.

    A dict is a derived-profile spec, as a scenario's ``profile = { model = ...,
    gpu = ..., tp = ..., dtype = ... }`` gives it (``sim.profiles.profile_from_spec``);
    so is a string holding that object as JSON.
    """
    if isinstance(name_or_path, str) and name_or_path.lstrip().startswith("{"):
        try:  # a derived-profile spec as JSON text (how live mode hands one to an emulator)
            name_or_path = json.loads(name_or_path)
        except json.JSONDecodeError as exc:
            raise ProfileError(f"profile {name_or_path!r} starts like JSON but is not ({exc})") from None
        if not isinstance(name_or_path, dict):
            raise ProfileError("a derived-profile spec in JSON must be an object")
    if isinstance(name_or_path, dict):
        from sim.profiles import DeriveError, profile_from_spec

        try:
            return profile_from_spec(name_or_path)
        except DeriveError as exc:
            raise ProfileError(str(exc)) from None
    text_name = str(name_or_path)
    if text_name.endswith(".json") or "/" in text_name or Path(text_name).is_file():
        path = Path(text_name)
        if not path.is_file():
            raise ProfileError(f"latency profile file {path} does not exist")
        return LatencyProfile.from_json(path.read_text(), str(path))
    resource = resources.files("sim") / PROFILE_DIR / f"{text_name}.json"
    if not resource.is_file():
        raise ProfileError(
            f"unknown latency profile {text_name!r}; shipped profiles: {', '.join(shipped_profiles())} "
            "(or give a path to a profile .json, or derive one: profile = { model = \"...\", gpu = \"...\" })"
        )
    return LatencyProfile.from_json(resource.read_text(), f"profile {text_name}")
