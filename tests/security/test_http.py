"""The HTTP edge under attack: slow clients and request smuggling, through real nginx.

A farm (``nixfarm up``) behind its own nginx (``[edge] server = "nginx"``), with short
client timeouts so the slow clients' cut is seen within seconds. Requests are written on
raw sockets, byte for byte, because an HTTP client library would refuse to send them.
"""

from __future__ import annotations

import json
import re
import socket
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.fixtures.farm import RunningFarm, free_port

#: The farm's nginx client_header_timeout / client_body_timeout, in seconds.
CUT = 3


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    tmp = tmp_path_factory.mktemp("sec-http")
    config = tmp / "nixfarm.toml"
    config.write_text(f'[nix_options]\nsubstituters = ""\n\n[jobs]\nembedded_runner_slots = 0\n\n'
                      f'[edge]\nserver = "nginx"\nclient_header_seconds = {CUT}\n'
                      f'client_body_seconds = {CUT}\n')
    farm = RunningFarm(tmp / "data", free_port())
    farm.start("--config", str(config))
    yield farm
    farm.stop()


def _connect(farm: RunningFarm, timeout: float = 10) -> socket.socket:
    return socket.create_connection(("127.0.0.1", farm.port), timeout=timeout)


def _read_all(sock: socket.socket, seconds: float = 5) -> bytes:
    """Everything the server sends until it closes (or ``seconds`` pass quietly)."""
    sock.settimeout(seconds)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except TimeoutError:
        pass
    return b"".join(chunks)


def _statuses(answer: bytes) -> list[int]:
    """The status of every response in ``answer`` (several if the server answered more
    than one request on the connection)."""
    # A response follows the previous body directly, not on a line of its own.
    return [int(code) for code in re.findall(rb"HTTP/1\.[01] (\d{3}) ", answer)]


def test_nginx_conf_has_the_client_timeouts(edge: RunningFarm) -> None:
    conf = next(edge.data_dir.rglob("nginx.conf"))
    text = conf.read_text()
    assert f"client_header_timeout {CUT}s;" in text
    assert f"client_body_timeout {CUT}s;" in text


def _slow_header(farm: RunningFarm) -> socket.socket:
    sock = _connect(farm)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-a: ")
    return sock


def _slow_body(farm: RunningFarm) -> socket.socket:
    sock = _connect(farm)
    sock.sendall(f"POST /api/v1/caches HTTP/1.1\r\nHost: x\r\n"
                 f"Authorization: Bearer {farm.token}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{".encode())
    return sock


def test_slow_clients_do_not_stop_others_and_are_cut(edge: RunningFarm) -> None:
    """50 slow connections: 25 trickle their headers one byte a second, 25 send their
    headers and part of a body, then stall. A normal request is still answered at once
    while they are open, and nginx closes every one of them after its timeouts.

    (client_header_timeout bounds the whole header; client_body_timeout only the pause
    between two reads of the body, see docs/security.md.)"""
    slow = [(_slow_header if i % 2 else _slow_body)(edge) for i in range(50)]
    try:
        opened = time.monotonic()
        cut: dict[int, float] = {}
        answered = []
        while time.monotonic() - opened < CUT + 8 and len(cut) < len(slow):
            started = time.monotonic()
            r = edge.get("/api/v1/caches")
            answered.append(time.monotonic() - started)
            assert r.status_code == 200, r.text
            for i, sock in enumerate(slow):
                if i in cut:
                    continue
                try:
                    if i % 2:
                        sock.sendall(b"a")
                    sock.setblocking(False)
                    try:
                        # Anything readable (a 408 or the end): nginx gave up on it.
                        sock.recv(65536)
                        cut[i] = time.monotonic() - opened
                    except BlockingIOError:
                        pass
                    finally:
                        sock.setblocking(True)
                except OSError:
                    cut[i] = time.monotonic() - opened
            time.sleep(1)
        assert max(answered) < 2.0, answered
        assert len(cut) == len(slow), \
            f"{len(slow) - len(cut)} slow clients still open after {CUT + 8} s"
        # Cut by the timeouts, not at once (the test would prove nothing otherwise).
        assert min(cut.values()) >= CUT - 1, sorted(cut.values())
    finally:
        for sock in slow:
            sock.close()


# -- request smuggling -------------------------------------------------------------

def _cache_exists(farm: RunningFarm, name: str) -> bool:
    r = farm.get(f"/api/v1/caches/{name}")
    assert r.status_code in (200, 404), r.text
    return r.status_code == 200


def _smuggled(farm: RunningFarm) -> tuple[str, bytes]:
    """A complete request that creates a cache named for this test, with the admin's
    token: if the app ever parses it as a request of its own, the cache exists."""
    name = f"smuggled-{uuid.uuid4().hex[:8]}"
    body = json.dumps({"name": name, "private": False}).encode()
    return name, (b"POST /api/v1/caches HTTP/1.1\r\nHost: x\r\n"
                  + f"Authorization: Bearer {farm.token}\r\n".encode()
                  + b"Content-Type: application/json\r\n"
                  + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)


def _front(headers: bytes) -> bytes:
    return b"POST /api/v1/jobs/1/cancel HTTP/1.1\r\nHost: x\r\n" + headers


def _payloads(smuggled: bytes) -> dict[str, bytes]:
    n = len(smuggled)
    chunked_prefix = b"0\r\n\r\n"
    return {
        # CL.TE: a front end trusting Content-Length passes the smuggled request as body;
        # a back end trusting chunked ends the body at "0" and reads the rest as a request.
        "cl-te": _front(f"Content-Length: {len(chunked_prefix) + n}\r\n".encode()
                        + b"Transfer-Encoding: chunked\r\n\r\n" + chunked_prefix + smuggled),
        # TE.CL: the opposite: the chunk holds the smuggled request, CL stops before it.
        "te-cl": _front(b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
                        + f"{n:x}\r\n".encode() + smuggled + b"\r\n0\r\n\r\n"),
        "duplicate-cl": _front(f"Content-Length: 0\r\nContent-Length: {n}\r\n\r\n".encode()
                               + smuggled),
        "te-chunked-identity": _front(f"Content-Length: {n}\r\n".encode()
                                      + b"Transfer-Encoding: chunked, identity\r\n\r\n"
                                      + smuggled),
        "te-identity-alone": _front(b"Transfer-Encoding: identity\r\n\r\n" + smuggled),
        # obs-fold: a folded Transfer-Encoding one parser joins and another drops.
        "obs-fold-te": _front(f"Content-Length: {n}\r\nX-Folded: a\r\n".encode()
                              + b" Transfer-Encoding: chunked\r\n\r\n" + chunked_prefix
                              + smuggled),
        "space-before-colon": _front(f"Content-Length: {len(chunked_prefix) + n}\r\n".encode()
                                     + b"Transfer-Encoding : chunked\r\n\r\n"
                                     + chunked_prefix + smuggled),
        # A bare LF: a parser that ends lines only at CRLF sees no Content-Length (it is
        # part of X-a's value) and reads the smuggled bytes as the next request.
        "bare-lf": _front(f"X-a: b\nContent-Length: {n}\r\n\r\n".encode() + smuggled),
    }


PAYLOADS = list(_payloads(b"").keys())


@pytest.mark.parametrize("kind", PAYLOADS)
def test_ambiguous_framing_never_smuggles_a_request(edge: RunningFarm, kind: str) -> None:
    """Each payload tries to make the app read a second request (which would create a
    cache) hidden in the first one's body. nginx must refuse the payload (4xx/5xx) or
    forward it so that the hidden bytes stay a body: the cache is never created."""
    name, smuggled = _smuggled(edge)
    payload = _payloads(smuggled)[kind]
    with _connect(edge) as sock:
        sock.sendall(payload)
        answer = _read_all(sock, seconds=3)
    statuses = _statuses(answer)
    assert statuses, f"{kind}: no answer at all: {answer[:300]!r}"
    assert 201 not in statuses, f"{kind}: the smuggled request was answered: {answer!r}"
    assert not _cache_exists(edge, name), f"{kind}: the app ran the smuggled request"
    # Other clients, whose requests nginx sends over the same pooled upstream
    # connections, still get their own answers (none left poisoned by leftover bytes).
    for _ in range(5):
        assert edge.get("/api/v1/caches").status_code == 200


def test_refused_outright(edge: RunningFarm) -> None:
    """The ambiguous framings nginx (>= 1.21.1) rejects before any byte reaches the app."""
    _, smuggled = _smuggled(edge)
    payloads = _payloads(smuggled)
    refused = {}
    for kind in ("cl-te", "te-cl", "duplicate-cl", "te-chunked-identity", "obs-fold-te",
                 "space-before-colon"):
        with _connect(edge) as sock:
            sock.sendall(payloads[kind])
            statuses = _statuses(_read_all(sock, seconds=3))
        refused[kind] = statuses
    assert all(s and s[0] in (400, 501) for s in refused.values()), refused


def test_control_a_valid_smuggled_request_does_create_the_cache(edge: RunningFarm) -> None:
    """The check above can fail: the same request, sent as a request of its own after
    a harmless one on the same connection, does create the cache."""
    name, smuggled = _smuggled(edge)
    with _connect(edge) as sock:
        last = smuggled.replace(b"Host: x\r\n", b"Host: x\r\nConnection: close\r\n", 1)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + last)
        answer = _read_all(sock)
    assert _statuses(answer) == [200, 201], answer
    assert _cache_exists(edge, name)



# -- a victim's credentials captured by a smuggled prefix ---------------------------

def _target_token(farm: RunningFarm) -> int:
    """A live token the capture would revoke (with the victim's admin token)."""
    name = f"target-{uuid.uuid4().hex[:8]}"
    farm.cli("token", "create", "--name", name, "--scope", "jobs:submit")
    (row,) = [t for t in json.loads(farm.cli("token", "list", "--json").stdout)
              if t["name"] == name]
    token_id: int = row["id"]
    return token_id


def _revoked(farm: RunningFarm, token_id: int) -> bool:
    # Listings leave revoked tokens out.
    listed = json.loads(farm.cli("token", "list", "--json").stdout)
    return token_id not in {t["id"] for t in listed}


def _capture_prefix(token_id: int) -> bytes:
    """The start of a request with no credentials of its own, cut inside a header: if
    a server ever read it as the start of a request, the next request on that
    connection (another client's) would become the rest of that header line, and its
    ``Authorization`` would authenticate the attacker's DELETE (its ``Host`` too: the
    prefix has none, as two would be refused)."""
    return f"DELETE /api/v1/tokens/{token_id} HTTP/1.1\r\nX-Swallowed: ".encode()


def _victim(farm: RunningFarm) -> bytes:
    return (b"GET /api/v1/whoami HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {farm.token}\r\n\r\n".encode())


def _capture_payloads(prefix: bytes) -> dict[str, bytes]:
    # Besides the ambiguous framings, a plain body the app never reads (the cancel
    # of a job that is not there is refused before): Granian must skip it, not leave
    # it on nginx's pooled connection in front of the next client's request.
    unread = _front(f"Content-Length: {len(prefix)}\r\n\r\n".encode()) + prefix
    return {**_payloads(prefix), "unread-body": unread}


@pytest.mark.parametrize("kind", [*PAYLOADS, "unread-body"])
def test_a_smuggled_prefix_never_captures_the_next_clients_credentials(
        edge: RunningFarm, kind: str) -> None:
    """The attacker hides a request prefix in each ambiguous framing; victims (the
    admin) then send requests through nginx, over nginx's pooled connections to the
    app. No victim's request completes the attacker's (the token stays), and every
    victim gets its own answer."""
    target = _target_token(edge)
    payload = _capture_payloads(_capture_prefix(target))[kind]
    with _connect(edge) as attacker:
        attacker.sendall(payload)
        # While the attacker's connection is open, and after: the victims.
        for _ in range(10):
            with _connect(edge) as victim:
                victim.sendall(_victim(edge))
                answer = victim.recv(65536)
            assert _statuses(answer)[:1] == [200], answer
            assert b'"scopes":["admin"]' in answer.replace(b" ", b""), answer
        _read_all(attacker, seconds=1)
    for _ in range(10):
        r = edge.get("/api/v1/whoami")
        assert r.status_code == 200 and "admin" in r.json()["scopes"], r.text
    assert not _revoked(edge, target), f"{kind}: a victim's token revoked token {target}"


def test_control_a_captured_prefix_does_use_the_victims_credentials(
        edge: RunningFarm) -> None:
    """The check above can fail: the same prefix followed on the same connection by
    the victim's request is read as one request, authenticated by the victim's
    header, and the token is revoked."""
    target = _target_token(edge)
    victim = _victim(edge).replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
    with _connect(edge) as sock:
        sock.sendall(_capture_prefix(target) + victim)
        answer = _read_all(sock)
    assert _statuses(answer) == [200], answer
    assert _revoked(edge, target)
