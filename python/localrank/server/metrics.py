"""Prometheus metrics of one server process (text exposition at ``GET /metrics``).

Each app gets its own registry, so two apps in one process (tests) never share counters. With
several worker processes each exposes its own counts; a scraper sums them (the usual
Prometheus practice), and the storage-wide figures (rows held, bundle version) are read from
the database at scrape time, so every worker reports the same values for those.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """The counters, histograms and gauges the server updates."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "localrank_http_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "localrank_http_request_seconds",
            "Request latency by route",
            ["route"],
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        self.reports = Counter(
            "localrank_reports",
            "Reports received, by result (stored or duplicate)",
            ["result"],
            registry=r,
        )
        self.batches = Counter(
            "localrank_batches",
            "Batches by outcome (accepted, refused code, unavailable)",
            ["outcome"],
            registry=r,
        )
        self.aggregations = Counter(
            "localrank_aggregations", "Aggregation runs by outcome", ["outcome"], registry=r
        )
        self.stored = Gauge(
            "localrank_storage_rows",
            "Rows held in the database, by table",
            ["table"],
            registry=r,
        )
        self.bundle_version = Gauge(
            "localrank_bundle_version", "Version of the latest published bundle", registry=r
        )

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
