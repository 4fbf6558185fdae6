"""Counting every answer of the app into the metrics (``nixfarm.metrics``).

An ASGI middleware (not Starlette's BaseHTTPMiddleware, which would buffer and hide
the ``http.response.pathsend`` extension the file responses use).
"""

from __future__ import annotations

import time

from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nixfarm.metrics import Metrics, route_label


def exposition(request: Request) -> Response:
    """``GET /metrics``: the app's metrics in Prometheus' text format."""
    metrics: Metrics = request.app.state.metrics
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


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
