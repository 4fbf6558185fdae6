"""``JobsClient.follow`` against the event stream as the farm sends it: sse-starlette
puts a keep-alive comment (``: ping - DATE``) in every 15 s of silence, as while a VM
boots; httpx-sse hands it on as an empty event, which ``nixfarm submit --follow``
once failed to decode (a traceback, mid-job)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import pytest

from nixfarm.client.api import Client, Endpoint
from nixfarm.client.jobs import JobsClient

# Recorded from a farm (curl -N .../api/v1/jobs/1/events) while a VM job booted.
STREAM = (
    b'id: 32,0,0,0\r\nevent: log\r\ndata: {"task": null, "seq": 0, "text": '
    b'"Preparing image debian/bookworm\\n"}\r\n\r\n'
    b": ping - 2026-12-03 14:37:25.735322+00:00\n\n"
    b'id: 527,0,0,0\r\nevent: log\r\ndata: {"task": null, "seq": 1, "text": "booted\\n"}'
    b"\r\n\r\n"
    b'id: 530,0,0,0\r\nevent: end\r\ndata: {"status": "success"}\r\n\r\n'
)


@pytest.fixture
def server() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Content-Length", str(len(STREAM)))
            self.end_headers()
            self.wfile.write(STREAM)

        def log_message(self, *args: Any) -> None:
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{http.server_address[1]}"
    finally:
        http.shutdown()
        http.server_close()


def test_keep_alive_comments_are_skipped(server: str) -> None:
    async def follow() -> list[tuple[str, dict[str, Any]]]:
        async with Client(Endpoint(server, None)) as client:
            return [event async for event in JobsClient(client).follow(1)]

    events = anyio.run(follow)
    assert events == [("log", {"task": None, "seq": 0,
                               "text": "Preparing image debian/bookworm\n"}),
                      ("log", {"task": None, "seq": 1, "text": "booted\n"}),
                      ("end", {"status": "success"})]
