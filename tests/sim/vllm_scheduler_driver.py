"""Drive vLLM's real V1 scheduler step by step and log what it does (run by vLLM's Python).

This script runs in the interpreter that has vLLM installed (``.vllm/venv``), not
in the lab's environment, and imports nothing from the lab: it reads a case as
JSON on stdin and writes one JSON object per engine iteration on stdout. The
lab's differential test (``tests/sim/test_sim_engine_vs_vllm.py``) feeds the same
case to ``sim.engine.Engine`` and compares the two logs.

The scheduler is built offline without a model, the way vLLM's own
``tests/v1/core/utils.py`` builds it: a ``VllmConfig`` from a model directory
holding only ``config.json`` (no weights, no tokenizer), a ``KVCacheConfig`` with
one full-attention group of ``num_gpu_blocks`` blocks, and the real
``Scheduler`` (or ``AsyncScheduler``) with its real ``KVCacheManager`` and
``BlockPool``. The model runner is replaced by its output: each request whose
scheduled tokens reach the end of its sequence samples the next token of the
case's fixed output (``ignore_eos``, ``max_tokens`` = the output's length).

The engine loop mirrors ``vllm/v1/engine/core.py``: synchronous mode schedules a
step and applies its output (``step``); asynchronous mode keeps two batches in
flight (``step_with_batch_queue``): the next step is scheduled before the
previous step's output is applied. Requests arriving at iteration ``k`` are added
before its schedule.

Cases (stdin): ``{"cases": [case, ...]}`` or one case, each::

    {"config": {"num_gpu_blocks", "block_size", "max_num_seqs",
                "max_num_batched_tokens", "enable_prefix_caching",
                "async_scheduling", "max_model_len"},
     "requests": [{"id", "arrival", "prompt": [token ids], "output": [token ids]}],
     "max_iterations": int}

Per iteration (stdout, with ``"case"``: its index): the tokens scheduled per request, admissions with their
prefix-cache hit (tokens), preemptions, finishes, the running and waiting
queues, KV blocks in use (the null block excluded), the prefix-cache counters
vLLM exports, and the KV-cache events of the block pool, each block named by
``"<request id>:<block index>"`` of the first request in the case whose tokens
fill that block (the two sides hash differently; this names blocks alike).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from collections import deque


def _model_dir(root: str) -> str:
    """A Llama ``config.json`` only: enough for ``ModelConfig`` with no tokenizer."""
    path = os.path.join(root, "model")
    os.makedirs(path, exist_ok=True)
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32,
        "max_position_embeddings": 1 << 17, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": True, "vocab_size": 1 << 17, "bos_token_id": 0,
        "eos_token_id": 1, "torch_dtype": "float32",
    }
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    return path


def build_scheduler(cfg: dict, root: str):
    import torch
    from vllm.config import CacheConfig, KVEventsConfig, ModelConfig, SchedulerConfig, VllmConfig
    from vllm.v1.core.sched.async_scheduler import AsyncScheduler
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
    from vllm.v1.structured_output import StructuredOutputManager

    bs = cfg["block_size"]
    max_model_len = cfg["max_model_len"]
    scheduler_config = SchedulerConfig(
        max_num_seqs=cfg["max_num_seqs"],
        max_num_batched_tokens=cfg["max_num_batched_tokens"],
        max_model_len=max_model_len,
        enable_chunked_prefill=True,
        is_encoder_decoder=False,
        async_scheduling=cfg["async_scheduling"],
    )
    model_config = ModelConfig(model=_model_dir(root), skip_tokenizer_init=True, dtype="float32",
                               seed=0, max_model_len=max_model_len)
    cache_config = CacheConfig(block_size=bs, enable_prefix_caching=cfg["enable_prefix_caching"])
    # Events are taken from the block pool directly (see ``take_events``); the
    # publisher itself is the null one.
    events = KVEventsConfig(enable_kv_cache_events=True, publisher="null")
    vllm_config = VllmConfig(scheduler_config=scheduler_config, model_config=model_config,
                             cache_config=cache_config, kv_events_config=events)
    # The CPU platform turns asynchronous scheduling off in VllmConfig; the
    # scheduler class itself does not depend on the platform.
    kv_cache_config = KVCacheConfig(
        num_blocks=cfg["num_gpu_blocks"],
        kv_cache_tensors=[],
        kv_cache_groups=[KVCacheGroupSpec(["layer"], FullAttentionSpec(
            block_size=bs, num_kv_heads=1, head_size=1, dtype=torch.float32))],
    )
    cache_config.num_gpu_blocks = cfg["num_gpu_blocks"]
    cls = AsyncScheduler if cfg["async_scheduling"] else Scheduler
    return cls(vllm_config=vllm_config, kv_cache_config=kv_cache_config,
               structured_output_manager=StructuredOutputManager(vllm_config),
               block_size=bs, log_stats=True)


class Driver:
    def __init__(self, case: dict, root: str) -> None:
        from vllm.sampling_params import SamplingParams
        from vllm.utils.hashing import sha256
        from vllm.v1.core.kv_cache_utils import (get_request_block_hasher, hash_block_tokens,
                                                 init_none_hash, maybe_convert_block_hash)
        from vllm.v1.request import Request

        self.cfg = case["config"]
        self.debug = bool(case.get("debug"))
        self.sched = build_scheduler(self.cfg, root)
        self.async_mode = bool(self.cfg["async_scheduling"])
        bs = self.cfg["block_size"]
        init_none_hash(sha256)
        hasher = get_request_block_hasher(bs, sha256)
        self.outputs: dict[str, list[int]] = {}
        self.pending: dict[int, list] = {}
        #: vLLM block hash (as events carry it) -> "<request>:<block index>" of the
        #: first request that has it.
        self.names: dict = {}
        for r in case["requests"]:
            rid = str(r["id"])
            self.outputs[rid] = list(r["output"])
            params = SamplingParams(max_tokens=len(r["output"]), ignore_eos=True, temperature=0.0)
            req = Request(request_id=rid, prompt_token_ids=list(r["prompt"]), sampling_params=params,
                          pooling_params=None, arrival_time=float(r["arrival"]), block_hasher=hasher)
            self.pending.setdefault(int(r["arrival"]), []).append(req)
            tokens = list(r["prompt"]) + list(r["output"])
            parent = None
            for i in range(len(tokens) // bs):
                parent = hash_block_tokens(sha256, parent, tokens[i * bs:(i + 1) * bs], None)
                self.names.setdefault(maybe_convert_block_hash(parent), f"{rid}:{i}")
        self.events: list = []
        manager = self.sched.kv_cache_manager
        take = manager.take_events

        def take_and_keep():  # the scheduler publishes what it takes; keep a copy
            evs = take()
            self.events.extend(evs)
            return evs

        manager.take_events = take_and_keep
        self.queries = self.hits = 0
        self._stats, self._seen = None, (0, 0)

    # --- the fake model runner ---------------------------------------------------------
    def _run_model(self, out):
        from vllm.v1.outputs import ModelRunnerOutput

        ids, sampled = [], []
        for rid, n in out.num_scheduled_tokens.items():
            req = self.sched.requests[rid]
            ids.append(rid)
            # A request samples when the chunk reaches the end of what it knows
            # (is_prefill_chunk is set by _update_after_schedule).
            sampled.append([] if req.is_prefill_chunk else [-1])
        return ModelRunnerOutput(req_ids=ids, req_id_to_index={r: i for i, r in enumerate(ids)},
                                 sampled_token_ids=sampled)

    def _fill_tokens(self, out, result) -> None:
        """Turn the placeholders into the case's output tokens, in delivery order."""
        for rid, toks in zip(result.req_ids, result.sampled_token_ids):
            if toks:
                req = self.sched.requests.get(rid)
                k = len(req.output_token_ids) if req is not None else 0
                seq = self.outputs[rid]
                toks[0] = seq[k] if k < len(seq) else 2

    def _apply(self, out, result) -> list[str]:
        self._fill_tokens(out, result)
        finished = []
        outputs = self.sched.update_from_output(out, result)
        for eco in outputs.values():
            for o in eco.outputs:
                if o.finish_reason is not None:
                    finished.append(o.request_id)
        return finished

    def _count_prefix_stats(self) -> None:
        """What vLLM's prefix-cache counters counted in this schedule.

        Read from the manager's own ``PrefixCacheStats`` (``queries``/``hits``: first
        admissions; re-admissions after a preemption go to ``preempted_*``) right
        after each schedule: vLLM publishes them with a later step's output, one
        step later in asynchronous mode, so the counts are compared as counted.
        """
        stats = self.sched.kv_cache_manager.prefix_cache_stats
        if stats is not self._stats:
            self._stats, self._seen = stats, (0, 0)
        q, h = stats.queries, stats.hits
        self.queries += q - self._seen[0]
        self.hits += h - self._seen[1]
        self._seen = (q, h)

    # --- one iteration of the engine core's loop ------------------------------------------
    def run(self, max_iterations: int):
        sched = self.sched
        queue: deque = deque()  # (scheduler output, model output) in flight, oldest right
        k = 0
        while k < max_iterations:
            for req in self.pending.pop(k, []):
                sched.add_request(req)
            if not sched.get_num_unfinished_requests() and not queue and not self.pending:
                break
            waiting_before = {r.request_id for r in sched.requests.values()
                              if r.status.name in ("WAITING", "PREEMPTED")}
            finished: list[str] = []
            scheduled: dict[str, int] = {}
            admitted: list = []
            preempted: list[str] = []
            if sched.has_requests():
                out = sched.schedule()
                self._count_prefix_stats()
                # Events as they happen (vLLM publishes them with a later step's
                # output, one step later in asynchronous mode).
                self.events.extend(sched.kv_cache_manager.block_pool.take_events())
                scheduled = dict(out.num_scheduled_tokens)
                preempted = sorted(out.preempted_req_ids)
                for rid, n in scheduled.items():
                    req = sched.requests[rid]
                    if rid in waiting_before:
                        admitted.append([rid, req.num_computed_tokens - n])
                result = self._run_model(out)
                queue.appendleft((out, result))
                executed = out.total_num_scheduled_tokens > 0
                if self.async_mode and len(queue) < 2 and (executed or sched.has_requests()):
                    pass  # fill the batch queue before waiting on a result
                else:
                    finished = self._apply(*queue.pop())
            elif queue:
                finished = self._apply(*queue.pop())
            else:
                k += 1
                continue
            record = {
                "iteration": k,
                "scheduled": scheduled,
                "admitted": admitted,
                "preempted": preempted,
                "finished": finished,
                "running": [r.request_id for r in sched.running],
                "waiting": [r.request_id for r in sched.waiting]
                + [r.request_id for r in sched.kv_holding_waiting],
                "kv_used": sched.kv_cache_manager.block_pool.num_gpu_blocks - 1
                - sched.kv_cache_manager.block_pool.get_num_free_blocks(),
                "prefix_queries": self.queries,
                "prefix_hits": self.hits,
                "events": [self._event(e) for e in self.events],
            }
            if self.debug:  # the free queue, front first: block names, None if unhashed
                record["free_queue"] = self._free_queue()
            yield record
            self.events.clear()
            k += 1

    def _free_queue(self) -> list:
        from vllm.v1.core.kv_cache_utils import get_block_hash, maybe_convert_block_hash

        out = []
        for b in self.sched.kv_cache_manager.block_pool.free_block_queue.get_all_free_blocks():
            h = b.block_hash
            out.append(None if h is None else self.names.get(
                maybe_convert_block_hash(get_block_hash(h)), "?"))
        return out

    def _event(self, e) -> list:
        from vllm.distributed.kv_events import AllBlocksCleared, BlockRemoved, BlockStored

        name = self.names.get
        if isinstance(e, BlockStored):
            parent = None if e.parent_block_hash is None else name(e.parent_block_hash, "?")
            return ["stored", [name(h, "?") for h in e.block_hashes], parent]
        if isinstance(e, BlockRemoved):
            return ["removed", [name(h, "?") for h in e.block_hashes]]
        if isinstance(e, AllBlocksCleared):
            return ["cleared"]
        return ["other", type(e).__name__]


def main() -> int:
    doc = json.load(sys.stdin)
    cases = doc["cases"] if "cases" in doc else [doc]
    out = sys.stdout
    with tempfile.TemporaryDirectory() as root:
        for c, case in enumerate(cases):
            driver = Driver(case, root)
            for record in driver.run(int(case.get("max_iterations", 100_000))):
                record["case"] = c
                out.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
