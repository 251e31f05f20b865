"""Request metrics: count and latency histogram by method, route template and status.

Every label has a bounded set of values, whatever clients send: the route is the matched rule
(`unmatched` otherwise), the status is one the app or gunicorn answers, and a method outside
HTTP's registered few is counted as `other` (a client inventing a method per request, even one
refused with 401, made a series each: 3,000 of them grew /metrics from 69 KB to 6.6 MB).

Metrics live in a registry per app, so tests can build many apps. Under gunicorn with several
workers, `gateway.gunicorn_conf` sets PROMETHEUS_MULTIPROC_DIR before any worker imports
prometheus_client: every worker then writes its samples to files in that folder and /metrics
aggregates all workers (prometheus_client's multiprocess mode).
"""

from __future__ import annotations

import os
import re
import time

from flask import Flask, Response, current_app, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client import generate_latest as render_latest

from gateway.config import MULTIPROC_ENV

PREFIX = "gpu_telemetry_gateway"
LABELS = ("method", "route", "status")
KEY = "gputel.metrics"
METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT")
)
OTHER_METHOD = "other"


class RequestMetrics:
    """The request counter and latency histogram of one app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            f"{PREFIX}_requests", "HTTP requests served.", LABELS, registry=self.registry
        )
        self.latency = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "Time to serve an HTTP request.",
            LABELS,
            registry=self.registry,
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one served request."""
        labels = (method if method in METHODS else OTHER_METHOD, route, str(status))
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)

    def exposition(self) -> Response:
        """Return the text exposition of every worker (multiprocess) or of this process."""
        folder = os.environ.get(MULTIPROC_ENV)
        if folder:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=folder)  # type: ignore[no-untyped-call]
        else:
            registry = self.registry
        return Response(render_latest(registry), content_type=CONTENT_TYPE_LATEST)


def _start() -> None:
    g.gputel_started = time.perf_counter()


def _finish(response: Response) -> Response:
    started = g.pop("gputel_started", None)
    if started is not None:
        route = route_label()
        metrics = current_metrics()
        metrics.observe(request.method, route, response.status_code, time.perf_counter() - started)
    return response


def route_label() -> str:
    """The matched route as the `route` label and the access log name it: the rule without
    converters (`/api/v1/gpus/<gpu_id>`, also for `<path:gpu_id>`), so dashboards and alerts
    keep their label values when a converter changes."""
    if request.url_rule is None:
        return "unmatched"
    return _CONVERTER.sub("<", request.url_rule.rule)


_CONVERTER = re.compile(r"<[a-z_]+:")


def current_metrics() -> RequestMetrics:
    """Return the metrics of the app handling the current request."""
    found: RequestMetrics = current_app.extensions[KEY]
    return found


def init_app(app: Flask) -> RequestMetrics:
    """Create the app's metrics and time every request."""
    metrics = RequestMetrics()
    app.extensions[KEY] = metrics
    app.before_request(_start)
    app.after_request(_finish)
    return metrics
