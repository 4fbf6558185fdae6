"""The one way nixfarm's clients call a server: answers typed, failures in the error tree.

The CLI's :class:`~nixfarm.client.api.Client` (and its jobs calls) and the runner's
:class:`~nixfarm.runner.protocol.RunnerClient` both go through a :class:`Connection`:

- a request that gets no answer (refused, reset, timed out) raises ``Unavailable``;
- an error answer raises the error the server raised (``raise_for``), so a 404 is
  ``NotFound`` here as it was there; 502, 503 and 504 (a proxy whose server is down,
  a server draining) are ``Unavailable`` too;
- a good answer is decoded into the type the caller names (``call(..., JobOut)``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar, cast

import httpx
from httpx_sse import EventSource, ServerSentEvent
from pydantic import BaseModel, TypeAdapter

from nixfarm.errors import (
    Conflict,
    Forbidden,
    IntegrityError,
    InvalidInput,
    NixfarmError,
    NotFound,
    Unauthorized,
    Unavailable,
)

T = TypeVar("T")

_ERRORS: dict[str, type[NixfarmError]] = {
    "IntegrityError": IntegrityError,
    "InvalidInput": InvalidInput,
    "ManifestError": InvalidInput,
    "NotFound": NotFound,
    "Unauthorized": Unauthorized,
    "Forbidden": Forbidden,
    "Conflict": Conflict,
}
_BY_STATUS: dict[int, type[NixfarmError]] = {
    400: InvalidInput, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict,
    502: Unavailable, 503: Unavailable, 504: Unavailable,
}


def error_named(kind: str, message: str, url: str) -> NixfarmError:
    """The error the server named ``kind`` (its class name), as raised here: what an
    answer's JSON and a WebSocket's error message both carry. ``url``: the server's,
    for an ``Unavailable``."""
    if kind == "Unavailable":
        return Unavailable(message, url=url)
    return _ERRORS.get(kind, NixfarmError)(message)


def websocket_url(url: str) -> str:
    """The ``ws://`` (``wss://``) URL of the server's ``http://`` (``https://``) one."""
    return url.replace("https://", "wss://", 1).replace("http://", "ws://", 1)


def raise_for(response: httpx.Response) -> None:
    """Turn an error answer back into the error the server raised."""
    if response.is_success:
        return
    try:
        error = response.json()["error"]
        kind, message = str(error["type"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        # Not ours (a proxy's error page, say): one line of plain text at most, never
        # a page of HTML in a terminal or a runner's log.
        text = response.text.strip()
        plain = response.headers.get("content-type", "").startswith("text/plain")
        kind = ""
        message = text if plain and text and "\n" not in text and len(text) <= 300 \
            else response.reason_phrase or "no explanation"
    cls = _ERRORS.get(kind) or _BY_STATUS.get(response.status_code, NixfarmError)
    raise cls(f"the server refused: {message} (HTTP {response.status_code})")


#: Validators of the non-model types answers are decoded as (``list[CacheOut]``), made
#: once: building one costs far more than using it.
_ADAPTERS: dict[object, TypeAdapter[Any]] = {}


def decode(response: httpx.Response, model: type[T]) -> T:
    """The body of a good answer as ``model`` (a pydantic model, or ``list[Model]``)."""
    if isinstance(model, type) and issubclass(model, BaseModel):
        return cast(T, model.model_validate_json(response.content))
    adapter = _ADAPTERS.get(model)
    if adapter is None:
        adapter = _ADAPTERS[model] = TypeAdapter(model)
    return cast(T, adapter.validate_json(response.content))


class Connection:
    """A pool of HTTP connections to one server, with one token (or none)."""

    def __init__(self, url: str, token: str | None, timeout: float | None = 60.0) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.AsyncClient(base_url=self.url, headers=headers,
                                      timeout=httpx.Timeout(timeout, connect=10.0))

    async def close(self) -> None:
        await self.http.aclose()

    def _unavailable(self, error: httpx.TransportError) -> Unavailable:
        why = str(error) or type(error).__name__  # some say nothing ("RemoteProtocolError")
        return Unavailable(f"cannot reach the server at {self.url}: {why}", url=self.url)

    async def send(self, method: str, path: str, body: BaseModel | None = None,
                   **kwargs: Any) -> httpx.Response:
        """The answer to a request (a JSON ``body``, or httpx's ``content=``...); raises
        for an error answer or none."""
        if body is not None:
            kwargs["content"] = body.model_dump_json(exclude_none=True)
            kwargs["headers"] = {"Content-Type": "application/json"}
        try:
            response = await self.http.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise self._unavailable(e) from None
        raise_for(response)
        return response

    async def call(self, method: str, path: str, model: type[T], body: BaseModel | None = None,
                   **kwargs: Any) -> T:
        """:meth:`send`, its answer decoded as ``model``."""
        return decode(await self.send(method, path, body, **kwargs), model)

    @asynccontextmanager
    async def events(self, path: str, last_event_id: str = "", **kwargs: Any
                     ) -> AsyncIterator[AsyncIterator[ServerSentEvent]]:
        """The Server-Sent Events at ``path``, from after ``last_event_id`` if given; the
        connection breaking while they are read raises ``Unavailable``."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        async with self.stream("GET", path, headers=headers, **kwargs) as response:
            yield EventSource(response).aiter_sse()

    @asynccontextmanager
    async def stream(self, method: str, path: str, **kwargs: Any
                     ) -> AsyncIterator[httpx.Response]:
        """A good answer whose body is read as it comes (a log, an event stream); the
        connection breaking while it is read raises ``Unavailable``."""
        try:
            async with self.http.stream(method, path, **kwargs) as response:
                if not response.is_success:
                    await response.aread()
                    raise_for(response)
                yield response
        except httpx.TransportError as e:
            raise self._unavailable(e) from None
