"""Prometheus metrics of one app, in a registry of its own (never the process-global one, so
that two apps in one process, as in the tests, count apart)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "detmix_http_requests", "HTTP requests answered", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "detmix_http_request_duration_seconds", "Time to answer a request", ["method", "route"],
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.images_mixed = Counter(
            "detmix_images_mixed", "Output images produced, by mix mode", ["mode"], registry=self.registry
        )
        self.rejections = Counter(
            "detmix_rejections", "Requests refused, by reason", ["reason"], registry=self.registry
        )
        self.in_flight = Gauge("detmix_batches_in_flight", "Batches admitted and not finished", registry=self.registry)
        self.uploads = Gauge("detmix_uploads_in_progress", "Batch bodies being received", registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
