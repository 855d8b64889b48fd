"""Prometheus metrics of a server, in a registry of its own (several apps in one process,
as in the tests, never share counters)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

disable_created_metrics()  # no *_created series: they double the output and no dashboard reads them

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("zerolm_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=r)
        self.latency = Histogram("zerolm_request_seconds", "time from request to response, by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("zerolm_batch_size", "rows per model batch", ["model", "work"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("zerolm_batch_seconds", "time of one model batch", ["model", "work"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("zerolm_queue_depth", "rows waiting for a batch", ["model"], registry=r)
        self.prompt_tokens = Counter("zerolm_input_tokens", "input tokens received", ["model"], registry=r)
        self.generated_tokens = Counter("zerolm_generated_tokens", "tokens generated", ["model"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
