"""A stand-in for Vultr's API v2, served on 127.0.0.1 by the test suite.

It speaks the documented shapes and status codes (/work/shared/reference/vultr-api.md):
``POST /v2/instances`` -> 202 ``{"instance"}`` (pending, ``main_ip`` 0.0.0.0), an
instance turns ``active`` with an address after ``polls_to_active`` looks at it,
``GET /v2/instances`` pages with base64 ``next__<n>`` cursors until ``next`` is "",
``DELETE`` -> 204 (404 after), errors ``{"error": "...", "status": N}``, 401 for a
wrong key, 400 for an unknown region or plan. Faults are injected per call
(``fail``): a 500 or a 429 (with ``Retry-After``) before the real answer. Every request
is recorded, with its body, so a test can read the user data a builder was given.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

KEY = "test-vultr-key-0123456789"
REGIONS = {"ewr", "ams"}
PLANS = {"vc2-1c-1gb", "vc2-2c-4gb"}


@dataclass
class Fault:
    method: str
    path: str
    status: int
    retry_after: str = ""


@dataclass
class Seen:
    method: str
    path: str
    status: int
    body: dict[str, Any] | None


@dataclass
class FakeVultr:
    polls_to_active: int = 1
    instances: dict[str, dict[str, Any]] = field(default_factory=dict)
    user_data: dict[str, str] = field(default_factory=dict)
    polls: dict[str, int] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    page_size: int = 2
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/v2"

    def fail(self, method: str, path: str, status: int, times: int = 1,
             retry_after: str = "") -> None:
        """The next ``times`` calls of ``method`` on ``path`` (a prefix) get ``status``."""
        with self.lock:
            self.faults.extend(Fault(method, path, status, retry_after) for _ in range(times))

    def calls(self, method: str, path: str = "/v2/instances") -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.method == method and s.path.startswith(path)]

    def creates(self) -> list[dict[str, Any]]:
        """The bodies of the accepted create requests, in order."""
        return [s.body for s in self.calls("POST") if s.status == 202 and s.body is not None]

    def live(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.instances.values())

    def leak(self, tags: list[str], label: str = "leaked") -> str:
        """An instance made behind the farm's back (as if a create's answer was lost)."""
        with self.lock:
            instance = _instance(label, "ewr", "vc2-1c-1gb", tags)
            instance.update(status="active", main_ip="203.0.113.250")
            self.instances[instance["id"]] = instance
            return str(instance["id"])

    # --- the API -----------------------------------------------------------------

    def handle(self, method: str, target: str, headers: dict[str, str],
               raw: bytes) -> tuple[int, dict[str, Any] | None, dict[str, str]]:
        parts = urlsplit(target)
        path, query = parts.path, parse_qs(parts.query)
        body: dict[str, Any] | None = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                return _error(400, "Invalid JSON.")
        status, answer, extra = self._answer(method, path, query, headers, body)
        with self.lock:
            self.seen.append(Seen(method, path, status, body))
        return status, answer, extra

    def _answer(self, method: str, path: str, query: dict[str, list[str]],
                headers: dict[str, str], body: dict[str, Any] | None
                ) -> tuple[int, dict[str, Any] | None, dict[str, str]]:
        with self.lock:
            for fault in self.faults:
                if fault.method == method and path.startswith(fault.path):
                    self.faults.remove(fault)
                    extra = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                    message = ("Rate limit reached." if fault.status == 429
                               else "Internal server error.")
                    return fault.status, {"error": message, "status": fault.status}, extra
        if headers.get("authorization") != f"Bearer {KEY}":
            return _error(401, "Invalid API token.")
        segments = path.strip("/").split("/")
        if segments[:2] != ["v2", "instances"]:
            return _error(404, "Not found.")
        with self.lock:
            if len(segments) == 2 and method == "POST":
                return self._create(body or {})
            if len(segments) == 2 and method == "GET":
                return self._list(query)
            instance = self.instances.get(segments[2]) if len(segments) > 2 else None
            if instance is None:
                return _error(404, "Invalid instance-id.")
            if len(segments) == 4 and segments[3] == "user-data" and method == "GET":
                return 200, {"user_data": {"data": self.user_data[instance["id"]]}}, {}
            if len(segments) == 3 and method == "GET":
                self._advance(instance)
                return 200, {"instance": dict(instance)}, {}
            if len(segments) == 3 and method == "DELETE":
                del self.instances[instance["id"]]
                return 204, None, {}
        return _error(405, "Method not allowed.")

    def _create(self, body: dict[str, Any]) -> tuple[int, dict[str, Any] | None, dict[str, str]]:
        if body.get("region") not in REGIONS:
            return _error(400, "Invalid region chosen.")
        if body.get("plan") not in PLANS:
            return _error(400, "Invalid plan chosen.")
        if body.get("os_id") != 159 or not str(body.get("ipxe_chain_url", "")).startswith(
                "http"):
            return _error(400, "A custom OS needs an iPXE chain URL.")
        try:
            base64.b64decode(body.get("user_data", ""), validate=True)
        except ValueError:
            return _error(400, "Invalid user_data: it must be base64.")
        instance = _instance(body.get("label", ""), body["region"], body["plan"],
                             list(body.get("tags") or []))
        self.instances[instance["id"]] = instance
        self.user_data[instance["id"]] = body.get("user_data", "")
        self.polls[instance["id"]] = 0
        return 202, {"instance": dict(instance, default_password="x")}, {}

    def _advance(self, instance: dict[str, Any]) -> None:
        self.polls[instance["id"]] = self.polls.get(instance["id"], 0) + 1
        if instance["status"] == "pending" and \
                self.polls[instance["id"]] >= self.polls_to_active:
            n = len(self.polls)
            instance.update(status="active", main_ip=f"203.0.113.{n}", disk=25,
                            server_status="installingbooting", power_status="running")

    def _list(self, query: dict[str, list[str]]
              ) -> tuple[int, dict[str, Any] | None, dict[str, str]]:
        found = list(self.instances.values())
        if "tag" in query:
            found = [i for i in found if query["tag"][0] in i["tags"]]
        start = 0
        if "cursor" in query:
            start = int(base64.b64decode(query["cursor"][0]).decode().removeprefix("next__"))
        size = min(int(query.get("per_page", ["100"])[0]), self.page_size)
        page = found[start:start + size]
        more = start + size < len(found)
        nxt = base64.b64encode(f"next__{start + size}".encode()).decode() if more else ""
        return 200, {"instances": page, "meta": {"total": len(found),
                                                 "links": {"next": nxt, "prev": ""}}}, {}


def _instance(label: str, region: str, plan: str, tags: list[str]) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()), "os": "Custom Installed", "ram": 1024, "disk": 0,
        "main_ip": "0.0.0.0", "vcpu_count": 1, "region": region, "plan": plan,
        "date_created": datetime.now(UTC).isoformat(timespec="seconds"),
        "status": "pending", "allowed_bandwidth": 1000, "netmask_v4": "",
        "gateway_v4": "0.0.0.0", "power_status": "running", "server_status": "none",
        "v6_network": "", "v6_main_ip": "", "v6_network_size": 0, "label": label,
        "internal_ip": "", "kvm": "", "hostname": label, "os_id": 159, "app_id": 0,
        "image_id": "", "firewall_group_id": "", "features": [], "tags": tags,
        "user_scheme": "root",
    }


def _error(status: int, message: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    return status, {"error": message, "status": status}, {}


def serve(fake: FakeVultr) -> threading.Thread:
    """Serve ``fake`` on 127.0.0.1 and a free port, in a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _any(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, answer, extra = fake.handle(self.command, self.path, headers, raw)
            data = json.dumps(answer).encode() if answer is not None else b""
            self.send_response(status)
            for name, value in extra.items():
                self.send_header(name, value)
            if answer is not None:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = do_PATCH = _any

        def log_message(self, format: str, *args: Any) -> None:
            pass

    fake.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=fake.server.serve_forever, daemon=True)
    thread.start()
    return thread


@contextlib.contextmanager
def running() -> Iterator[FakeVultr]:
    """A fake Vultr API served for the block's length."""
    fake = FakeVultr()
    serve(fake)
    try:
        yield fake
    finally:
        assert fake.server is not None
        fake.server.shutdown()
        fake.server.server_close()
