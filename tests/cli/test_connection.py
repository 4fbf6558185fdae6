"""The client's one table of the server's errors and its WebSocket URLs, shared by the
HTTP calls, ``nixfarm shell`` and the runner's shell relay."""

from __future__ import annotations

import httpx
import pytest

from nixfarm import errors
from nixfarm.client.connection import error_named, raise_for, websocket_url


@pytest.mark.parametrize("kind", ["NotFound", "Unauthorized", "Forbidden", "Conflict",
                                  "InvalidInput", "IntegrityError"])
def test_an_error_is_the_servers_over_http_and_websockets(kind: str) -> None:
    cls = getattr(errors, kind)
    assert type(error_named(kind, "no", "http://farm")) is cls
    answer = httpx.Response(400, json={"error": {"type": kind, "message": "no"}})
    with pytest.raises(cls):
        raise_for(answer)


def test_unavailable_and_unknown_kinds() -> None:
    unavailable = error_named("Unavailable", "draining", "http://farm")
    assert isinstance(unavailable, errors.Unavailable) and unavailable.url == "http://farm"
    assert type(error_named("Mystery", "?", "http://farm")) is errors.NixfarmError


def test_websocket_urls() -> None:
    assert websocket_url("http://127.0.0.1:8080") == "ws://127.0.0.1:8080"
    assert websocket_url("https://farm.example/nf") == "wss://farm.example/nf"
