"""The gateway's own ``/metrics``: decisions, in-flight, latency, retries, errors, health.

Per-backend series carry a ``backend`` label (the backend's name). Values that the
fleet already keeps (in-flight counts, health, ejections, scrape errors) are read
from it at scrape time rather than mirrored, so they cannot drift.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from live.router import LiveRouter
from live.transport.prometheus import REQUEST_LATENCY_BUCKETS, TTFT_BUCKETS

#: Routing work inside the gateway is sub-millisecond; these edges resolve it.
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005,
                    0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
ERROR_KINDS = ("connect", "status", "timeout", "midstream")


class _FleetCollector:
    def __init__(self, fleet: LiveRouter, names: list[str]) -> None:
        self.fleet = fleet
        self.names = names

    def collect(self):
        fleet = self.fleet
        snaps = fleet.router.snapshots
        inflight = GaugeMetricFamily("gateway_inflight_requests",
                                     "Requests the gateway has routed to a backend and not finished.",
                                     labels=["backend"])
        tokens = GaugeMetricFamily("gateway_inflight_prompt_tokens",
                                   "Prompt tokens of the gateway's in-flight requests per backend.",
                                   labels=["backend"])
        healthy = GaugeMetricFamily("gateway_backend_healthy",
                                    "1 if the backend takes traffic, 0 while it is ejected.",
                                    labels=["backend"])
        ejections = CounterMetricFamily("gateway_backend_ejections",
                                        "Times the backend was taken out after consecutive failures.",
                                        labels=["backend"])
        scrape_errors = CounterMetricFamily("gateway_scrape_errors",
                                            "Failed scrapes of the backend's /metrics.",
                                            labels=["backend"])
        for i, name in enumerate(self.names):
            inflight.add_metric([name], snaps[i].inflight_requests)
            tokens.add_metric([name], snaps[i].inflight_tokens)
            healthy.add_metric([name], 1.0 if snaps[i].healthy else 0.0)
            ejections.add_metric([name], fleet.ejections[i])
            scrape_errors.add_metric([name], fleet.scrape_errors[i])
        yield from (inflight, tokens, healthy, ejections, scrape_errors)
        if fleet.router.wants_kv_events:
            yield from self._kv_events()

    def _kv_events(self):
        """The exact mirrors and their event streams (precise strategies only)."""
        fleet = self.fleet
        router = fleet.router
        fam = {}

        def family(kind, name, doc, labels=("backend",)):
            fam[name] = (GaugeMetricFamily if kind == "g" else CounterMetricFamily)(
                name, doc, labels=list(labels))
            return fam[name]

        trusted = family("g", "gateway_kv_index_trusted",
                         "1 while the gateway's exact mirror of the backend's prefix cache is "
                         "trusted (events in order since the last reset), else 0.")
        blocks = family("g", "gateway_kv_index_blocks",
                        "Cached blocks in the gateway's exact mirror of the backend.")
        lookups = family("c", "gateway_precise_lookups",
                         "Exact-mirror lookups (one per backend per routing decision), all backends.",
                         ())
        fallbacks = family("c", "gateway_precise_fallbacks",
                           "Lookups answered by the approximate index because the backend's "
                           "mirror was not trusted.")
        counters = {
            "batches": "KV-event batches applied to the mirror.",
            "gaps": "Sequence gaps on the backend's live event stream.",
            "replays": "Replay requests sent to recover a gap.",
            "replayed": "Batches recovered by replay.",
            "replay_failures": "Replays that failed or no longer covered the gap.",
            "restarts": "Times the backend's publisher started over (a restarted server).",
            "decode_errors": "Messages that were not vLLM KV-event batches.",
            "resets_requested": "POST /reset_prefix_cache sent to regain an exact mirror.",
        }
        fams = {k: family("c", f"gateway_kv_events_{k}", doc) for k, doc in counters.items()}
        feed = {"orphan_stores": "Blocks stored under a parent the mirror did not hold.",
                "unknown_removals": "Removals of blocks the mirror did not hold."}
        feeds = {k: family("c", f"gateway_kv_events_{k}", doc) for k, doc in feed.items()}
        lookups.add_metric([], router.precise_lookups)
        for i, name in enumerate(self.names):
            trusted.add_metric([name], 1.0 if router.kv_events_trusted(i) else 0.0)
            index = router.exact_index(i)
            blocks.add_metric([name], len(index) if index is not None else 0)
            fallbacks.add_metric([name], router.precise_fallbacks_by_backend[i])
            stream = fleet.kv_streams[i]
            for k, f in fams.items():
                f.add_metric([name], getattr(stream.stats, k) if stream is not None else 0)
            stats = router.event_stats(i)
            for k, f in feeds.items():
                f.add_metric([name], getattr(stats, k) if stats is not None else 0)
        yield from fam.values()


class GatewayMetrics:
    """Counters and histograms the request path updates; label children resolved once."""

    def __init__(self, names: list[str]) -> None:
        self.registry = reg = CollectorRegistry(auto_describe=False)
        self.names = names
        decisions = Counter("gateway_decisions", "Routing decisions per chosen backend.",
                            ["backend"], registry=reg)
        retries = Counter("gateway_retries",
                          "Failovers away from a backend that failed before the first byte.",
                          ["backend"], registry=reg)
        errors = Counter("gateway_upstream_errors",
                         "Upstream failures by kind: connect, status (5xx), timeout, midstream.",
                         ["backend", "kind"], registry=reg)
        self.responses = Counter("gateway_responses", "Responses sent, by HTTP status.",
                                 ["code"], registry=reg)
        self.client_disconnects = Counter("gateway_client_disconnects",
                                          "Requests whose client went away (upstream cancelled).",
                                          registry=reg)
        self.rejected = Counter("gateway_no_backend",
                                "Requests refused with 503 because no backend was healthy.",
                                registry=reg)
        self.decisions = [decisions.labels(n) for n in names]
        self.retries = [retries.labels(n) for n in names]
        self.errors = [{k: errors.labels(n, k) for k in ERROR_KINDS} for n in names]
        self.ttft = Histogram("gateway_time_to_first_token_seconds",
                              "From the request's arrival at the gateway to its first streamed byte.",
                              buckets=TTFT_BUCKETS, registry=reg)
        self.e2e = Histogram("gateway_e2e_request_latency_seconds",
                             "From the request's arrival at the gateway to the end of its response.",
                             buckets=REQUEST_LATENCY_BUCKETS, registry=reg)
        self.overhead = Histogram("gateway_routing_overhead_seconds",
                                  "From the request's arrival to the upstream send (read, parse, "
                                  "hash, decide).", buckets=OVERHEAD_BUCKETS, registry=reg)
        self._codes: dict[int, object] = {}

    def attach(self, fleet: LiveRouter) -> None:
        self.registry.register(_FleetCollector(fleet, self.names))

    def response(self, code: int) -> None:
        child = self._codes.get(code)
        if child is None:
            child = self._codes[code] = self.responses.labels(str(code))
        child.inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
