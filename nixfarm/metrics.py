"""Prometheus metrics: their names, their route labels, and the registry that holds them.

What the app answers is counted by ``server/metering.py``; what nginx answers without
the app, from its access log (``edge/accesslog.py``): both count into these metrics,
under the same route labels. Each app gets its own registry so tests can build many
apps in one process.
"""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, Histogram

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
