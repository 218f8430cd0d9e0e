"""The server's Prometheus metrics, in a registry of its own (so several servers may live in one process)."""

from __future__ import annotations

from typing import Callable

from moai_edge.engines.errors import require

from ..memory import rss_mb
from ..request import Result

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300)
NOT_STAGES = {"decode_per_token", "total"}  # per-token means and the sum are not stages


class Metrics:
    def __init__(self, *, queue_depth: Callable[[], int], in_flight: Callable[[], int],
                 cache_counts: Callable[[], tuple[int, int]]):
        """`cache_counts()`: the image cache's (hits, misses) so far."""
        pc = require("prometheus_client", "serve")
        r = self.registry = pc.CollectorRegistry()
        self.content_type = pc.CONTENT_TYPE_LATEST
        self.render = lambda: pc.generate_latest(r)
        self.requests = pc.Counter("moai_edge_requests", "Requests finished, by endpoint and HTTP status",
                                   ["endpoint", "status"], registry=r)
        self.latency = pc.Histogram("moai_edge_request_seconds", "Arrival to answer, the queue included",
                                    ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait = pc.Histogram("moai_edge_queue_seconds", "Time a request waited for the model",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.stage = pc.Histogram("moai_edge_stage_seconds", "Time of each pipeline stage per request", ["stage"],
                                  buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = pc.Counter("moai_edge_generated_tokens", "Tokens generated", registry=r)
        self.tokens_per_s = pc.Histogram("moai_edge_decode_tokens_per_second", "Decode speed per request",
                                         buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000), registry=r)
        self.rejected = pc.Counter("moai_edge_requests_rejected", "Requests refused with 429 (queue full)",
                                   registry=r)
        self.cancelled = pc.Counter("moai_edge_requests_cancelled", "Requests whose client went away before the answer",
                                    registry=r)
        self.frames = pc.Counter("moai_edge_camera_frames", "Camera frames by outcome", ["outcome"], registry=r)
        pc.Gauge("moai_edge_queue_depth", "Requests waiting for the model", registry=r).set_function(queue_depth)
        pc.Gauge("moai_edge_requests_in_flight", "Requests the model is answering", registry=r).set_function(in_flight)
        pc.Gauge("moai_edge_resident_memory_bytes", "Resident memory of the server process",
                 registry=r).set_function(lambda: (rss_mb() or 0.0) * 2**20)
        r.register(CacheLookups(require("prometheus_client.core", "serve").CounterMetricFamily, cache_counts))

    def answered(self, result: Result, queue_ms: float) -> None:
        self.queue_wait.observe(queue_ms / 1e3)
        for stage, ms in result.timings_ms.items():
            if stage not in NOT_STAGES:
                self.stage.labels(stage).observe(ms / 1e3)
        self.tokens.inc(len(result.tokens))
        decode_ms = result.timings_ms.get("decode", 0.0)
        if len(result.tokens) > 1 and decode_ms > 0:
            self.tokens_per_s.observe((len(result.tokens) - 1) / (decode_ms / 1e3))


class CacheLookups:
    """The image cache's hits and misses, read at each scrape, as a counter."""

    def __init__(self, counter_family, counts: Callable[[], tuple[int, int]]):
        self.counter_family, self.counts = counter_family, counts

    def collect(self):
        family = self.counter_family("moai_edge_image_cache_lookups", "Image-cache lookups by outcome",
                                                  labels=["outcome"])
        for outcome, n in zip(("hit", "miss"), self.counts()):
            family.add_metric([outcome], n)
        yield family


class CountRequests:
    """Counts every HTTP request by endpoint and status (a plain ASGI middleware: it leaves streaming and
    disconnect detection alone)."""

    def __init__(self, app, metrics: Metrics, endpoints: tuple[str, ...]):
        self.app, self.metrics, self.endpoints = app, metrics, endpoints

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = [500]

        async def record(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            endpoint = scope["path"] if scope["path"] in self.endpoints else "other"
            self.metrics.requests.labels(endpoint, str(status[0])).inc()
