"""Read what is left of a request body after the answer was given.

An upload refused before its body was read (a wrong token, a bad name) leaves the body
in the connection. Closing that connection while the client (or nginx, which streams
uploads through) is still sending makes the sender fail with a broken pipe: nginx then
answers 502 instead of the 401 the app gave. So the rest of the body is read and
dropped, up to a bound, before the request is done.
"""

from __future__ import annotations

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Beyond this many bytes (or seconds), a refused upload's connection is dropped.
DRAIN_BYTES = 8 << 30
DRAIN_SECONDS = 300.0


def _has_body(scope: Scope) -> bool:
    for name, value in scope.get("headers", []):
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return True
    return False


class DrainMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _has_body(scope):
            await self.app(scope, receive, send)
            return
        finished = False

        async def tracking() -> Message:
            nonlocal finished
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                finished = True
            return message

        try:
            await self.app(scope, tracking, send)
        finally:
            if not finished:
                await _drain(tracking)


async def _drain(receive: Receive) -> None:
    left = DRAIN_BYTES
    with anyio.move_on_after(DRAIN_SECONDS):
        while left > 0:
            message = await receive()
            if message["type"] != "http.request":
                return
            left -= len(message.get("body", b""))
            if not message.get("more_body", False):
                return
