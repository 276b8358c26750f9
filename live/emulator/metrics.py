"""The emulator's ``/metrics``: vLLM 0.33's metric names, labels and bucket edges.

Names, help texts, label names (``model_name``, ``engine``) and histogram edges
follow vLLM's ``vllm/v1/metrics/loggers.py`` (``PrometheusStatLogger``), so a
router, dashboard or the gateway's scraper reads the emulator exactly as it
reads a real vLLM. Scheduler gauges and the prefix-cache and preemption counters
are read from the engine's published state at scrape time (vLLM publishes them
after each step); per-request histograms are observed by the driver as tokens
are produced.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from live.emulator.driver import EngineDriver, RequestState, StepObserver
from live.transport.prometheus import (
    ITERATION_TOKEN_BUCKETS, ITL_BUCKETS, REQUEST_LATENCY_BUCKETS, TTFT_BUCKETS, buckets_1_2_5,
)

LABELS = ("model_name", "engine")


class _EngineCollector:
    """Gauges and engine-owned counters, read from ``engine.published`` at scrape time."""

    def __init__(self, driver: EngineDriver, labels: list[str], cache_info: dict[str, str]) -> None:
        self.driver = driver
        self.labels = labels
        self.cache_info = cache_info

    def collect(self):
        m = self.driver.published
        lv = self.labels
        for name, doc, value in (
            ("vllm:num_requests_running", "Number of requests in model execution batches.", m.running),
            ("vllm:num_requests_waiting", "Number of requests waiting to be processed.", m.waiting),
            ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", m.kv_usage),
        ):
            g = GaugeMetricFamily(name, doc, labels=LABELS)
            g.add_metric(lv, float(value))
            yield g
        for name, doc, value in (
            ("vllm:prefix_cache_queries",
             "Prefix cache queries, in terms of number of queried tokens.", m.prefix_queries),
            ("vllm:prefix_cache_hits",
             "Prefix cache hits, in terms of number of cached tokens.", m.prefix_hits),
            ("vllm:num_preemptions", "Cumulative number of preemption from the engine.",
             m.preemptions),
        ):
            c = CounterMetricFamily(name, doc, labels=LABELS)
            c.add_metric(lv, float(value))
            yield c
        info = GaugeMetricFamily("vllm:cache_config_info", "Information of the LLMEngine CacheConfig",
                                 labels=list(self.cache_info))
        info.add_metric(list(self.cache_info.values()), 1.0)
        yield info


class EmulatorMetrics(StepObserver):
    """Observes the driver's steps into vLLM-named Prometheus series."""

    def __init__(self, model_name: str, max_model_len: int) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.model_name = model_name
        self.max_model_len = max_model_len
        lv = [model_name, "0"]
        self._lv = lv
        reg = self.registry

        def counter(name, doc):
            return Counter(name, doc, LABELS, registry=reg).labels(*lv)

        def hist(name, doc, buckets):
            return Histogram(name, doc, LABELS, buckets=buckets, registry=reg).labels(*lv)

        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens",
                                         "Number of generation tokens processed.")
        success = Counter("vllm:request_success", "Count of successfully processed requests.",
                          LABELS + ("finished_reason",), registry=reg)
        self.success = {r: success.labels(*lv, r) for r in ("stop", "length", "abort")}
        token_buckets = buckets_1_2_5(max_model_len)
        self.req_prompt = hist("vllm:request_prompt_tokens", "Number of prefill tokens processed.",
                               token_buckets)
        self.req_generation = hist("vllm:request_generation_tokens",
                                   "Number of generation tokens processed.", token_buckets)
        self.req_max_tokens = hist("vllm:request_params_max_tokens",
                                   "Histogram of the max_tokens request parameter.", token_buckets)
        self.iteration_tokens = hist("vllm:iteration_tokens_total",
                                     "Histogram of number of tokens per engine_step.",
                                     ITERATION_TOKEN_BUCKETS)
        self.ttft = hist("vllm:time_to_first_token_seconds",
                         "Histogram of time to first token in seconds.", TTFT_BUCKETS)
        self.itl = hist("vllm:inter_token_latency_seconds",
                        "Histogram of inter-token latency in seconds.", ITL_BUCKETS)
        self.tpot = hist("vllm:request_time_per_output_token_seconds",
                         "Histogram of time_per_output_token_seconds per request.", ITL_BUCKETS)
        self.e2e = hist("vllm:e2e_request_latency_seconds",
                        "Histogram of e2e request latency in seconds.", REQUEST_LATENCY_BUCKETS)
        self.queue_time = hist("vllm:request_queue_time_seconds",
                               "Histogram of time spent in WAITING phase for request.",
                               REQUEST_LATENCY_BUCKETS)
        self.inference_time = hist("vllm:request_inference_time_seconds",
                                   "Histogram of time spent in RUNNING phase for request.",
                                   REQUEST_LATENCY_BUCKETS)
        self.prefill_time = hist("vllm:request_prefill_time_seconds",
                                 "Histogram of time spent in PREFILL phase for request.",
                                 REQUEST_LATENCY_BUCKETS)
        self.decode_time = hist("vllm:request_decode_time_seconds",
                                "Histogram of time spent in DECODE phase for request.",
                                REQUEST_LATENCY_BUCKETS)

    def attach(self, driver: EngineDriver) -> None:
        """Register the engine-state collector (gauges read at scrape time)."""
        cfg = driver.config
        cache_info = {
            "block_size": str(cfg.block_size), "num_gpu_blocks": str(cfg.num_kv_blocks),
            "enable_prefix_caching": str(cfg.enable_prefix_caching), "engine": "0",
        }
        self.registry.register(_EngineCollector(driver, self._lv, cache_info))

    # --- StepObserver --------------------------------------------------------------
    def on_first_token(self, st: RequestState, t: float) -> None:
        self.ttft.observe(t - st.arrival)

    def on_token(self, st: RequestState, t: float, n: int) -> None:
        self.itl.observe(t - st.last_token)

    def on_step(self, prompt_tokens: int, gen_tokens: int) -> None:
        if prompt_tokens:
            self.prompt_tokens.inc(prompt_tokens)
        if gen_tokens:
            self.generation_tokens.inc(gen_tokens)
        self.iteration_tokens.observe(prompt_tokens + gen_tokens)

    def on_finish(self, st: RequestState, t: float) -> None:
        req = st.engine_req
        reason = "length" if st.output >= req.max_tokens else "stop"
        self.success[reason].inc()
        self._request_histograms(st, t)

    def on_abort(self, st: RequestState, t: float) -> None:
        self.success["abort"].inc()
        self._request_histograms(st, t)

    def _request_histograms(self, st: RequestState, t: float) -> None:
        req = st.engine_req
        self.e2e.observe(t - st.arrival)
        scheduled = st.scheduled if st.scheduled == st.scheduled else t
        self.queue_time.observe(scheduled - st.arrival)
        self.inference_time.observe(t - scheduled)
        first = st.first_token if st.first_token == st.first_token else t
        self.prefill_time.observe(first - scheduled)
        self.decode_time.observe(t - first)
        self.req_prompt.observe(req.prompt_len)
        self.req_generation.observe(st.output)
        self.req_max_tokens.observe(req.max_tokens)
        if st.output > 1:
            self.tpot.observe((t - first) / (st.output - 1))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
