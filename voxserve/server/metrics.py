"""Prometheus metrics of one server instance, in a registry of its own (several apps can live in one process).

Counters and histograms are updated where the work happens; the live gauges (queue depth, active slots,
engine health, GPU memory) are read from the running parts at scrape time by :class:`_LiveCollector`.
Stages of a request: ``decode`` (bytes -> samples), ``features`` (log-mel), ``queue_wait`` (waiting for a
decoding turn and for an engine slot), ``encoder``, ``decoder``, ``total``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

STAGES = ("decode", "features", "queue_wait", "encoder", "decoder", "total")
# Latency buckets from 1 ms to 10 min: one CPU decode step is a few ms, an hour-long job several minutes.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 180, 600)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_RTF_BUCKETS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1, 3, 10)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "voxserve_requests", "HTTP requests answered", ["route", "method", "status"], registry=r
        )
        self.stage_seconds = Histogram(
            "voxserve_stage_seconds",
            "Time spent per request stage",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "voxserve_batch_size", "Rows in each engine decode step", buckets=_BATCH_BUCKETS, registry=r
        )
        self.rtf = Histogram(
            "voxserve_real_time_factor",
            "Processing seconds per second of audio, per request",
            buckets=_RTF_BUCKETS,
            registry=r,
        )
        self.audio_seconds = Counter("voxserve_audio_seconds", "Seconds of audio transcribed", registry=r)
        self.rejected = Counter(
            "voxserve_rejected", "Requests refused before decoding", ["reason"], registry=r
        )
        self.fallbacks = Counter(
            "voxserve_engine_fallbacks",
            "Engine failures answered by moving to the CPU engine",
            ["model"],
            registry=r,
        )
        self.windows = Counter("voxserve_windows", "30 s windows decoded, by path", ["path"], registry=r)
        self.model_loads = Counter("voxserve_model_loads", "Models loaded", ["model"], registry=r)
        self.model_evictions = Counter("voxserve_model_evictions", "Models evicted", ["model"], registry=r)
        self._live = _LiveCollector()
        r.register(self._live)

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage_seconds.labels(stage).observe(max(0.0, seconds))

    def add_live(self, name: str, doc: str, labels: list[str], read: Callable[[], Iterable[tuple]]) -> None:
        """A gauge read at scrape time: ``read()`` yields (label values..., value) tuples."""
        self._live.sources.append((name, doc, labels, read))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _LiveCollector(Collector):
    def __init__(self) -> None:
        self.sources: list[tuple[str, str, list[str], Callable[[], Iterable[tuple]]]] = []

    def describe(self) -> list[Any]:
        return []  # values exist only at scrape time

    def collect(self) -> Iterable[GaugeMetricFamily]:
        for name, doc, labels, read in self.sources:
            family = GaugeMetricFamily(name, doc, labels=labels)
            for *values, v in read():
                family.add_metric([str(x) for x in values], float(v))
            yield family


class RequestMetricsMiddleware:
    """Counts every HTTP answer by route template (not raw path, which would explode label values)."""

    def __init__(self, app: Any, *, metrics: ServerMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(path, scope.get("method", ""), str(status)).inc()
