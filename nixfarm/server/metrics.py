"""Prometheus metrics: requests, latencies, bytes served, cache hits and misses.

An ASGI middleware (not Starlette's BaseHTTPMiddleware, which would buffer and hide
the ``http.response.pathsend`` extension the file responses use). Each app gets its
own registry so tests can build many apps in one process.
"""

from __future__ import annotations

import re
import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Few, fixed route labels: label values must not grow with the URLs clients send.
_ROUTES = [
    (re.compile(r"^/cache/[^/]+/[^/]+\.narinfo$"), "cache_narinfo"),
    (re.compile(r"^/cache/[^/]+/nar/"), "cache_nar"),
    (re.compile(r"^/cache/[^/]+/log/"), "cache_log"),
    (re.compile(r"^/cache/"), "cache_other"),
    (re.compile(r"^/api/"), "api"),
    (re.compile(r"^/v2/"), "registry"),
    (re.compile(r"^/(metrics|healthz)$"), "ops"),
]


def route_label(path: str) -> str:
    for pattern, label in _ROUTES:
        if pattern.match(path):
            return label
    return "web"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("nixfarm_http_requests_total", "HTTP requests answered",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("nixfarm_http_request_seconds",
                                 "Time to the start of the response", ["route"],
                                 registry=self.registry,
                                 buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25,
                                          .5, 1, 2.5, 5, 10))
        self.bytes_served = Counter("nixfarm_http_response_bytes_total",
                                    "Response body bytes sent", ["route"],
                                    registry=self.registry)
        self.cache_lookups = Counter("nixfarm_cache_narinfo_lookups_total",
                                     "narinfo lookups by result", ["cache", "result"],
                                     registry=self.registry)

    def exposition(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = route_label(scope["path"])
        started = time.perf_counter()
        status = 500
        length = 0
        streamed = 0
        handed_over = False

        async def observe(message: Message) -> None:
            nonlocal status, length, streamed, handed_over
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
                self.metrics.latency.labels(route).observe(time.perf_counter() - started)
                for name, value in message.get("headers", []):
                    if name.lower() == b"content-length":
                        length = int(value)
                    elif name.lower() == b"x-accel-redirect":
                        handed_over = True
            elif kind == "http.response.body":
                streamed += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            # A file handed to nginx is counted when nginx reports it, with its real
            # status (a 206 for a Range) and bytes: see nixfarm/edge/accesslog.py.
            if not handed_over:
                method = scope["method"]
                self.metrics.requests.labels(route, method, str(status)).inc()
                # A pathsend response carries no body messages: count its Content-Length.
                sent = streamed or (length if method != "HEAD" else 0)
                self.metrics.bytes_served.labels(route).inc(sent)
