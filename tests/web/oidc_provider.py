"""A small OpenID Connect provider on 127.0.0.1, speaking the real protocol.

Discovery document, an authorize endpoint with a sign-in form (a person picks who they
are), a token endpoint that checks the client's secret, the redirect URI and the PKCE
verifier and answers an ID token signed RS256 with a real key, and the JWKS holding
that key's public half. What the farm does with the answers is what it would do with
any provider's.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm


@dataclass
class Grant:
    client_id: str
    redirect_uri: str
    challenge: str
    nonce: str
    email: str


@dataclass
class Provider:
    client_id: str = "nixfarm"
    client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    #: email -> whether the provider vouches for it (email_verified)
    people: dict[str, bool] = field(default_factory=dict)
    key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048))
    kid: str = "test-key-1"
    grants: dict[str, Grant] = field(default_factory=dict)
    #: What the token endpoint was sent, for the test to inspect.
    token_requests: list[dict[str, str]] = field(default_factory=list)
    #: Set to make the next ID token wrong in one way: "nonce", "audience", "signature".
    tamper: str = ""
    server: ThreadingHTTPServer | None = None

    @property
    def issuer(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def id_token(self, grant: Grant) -> str:
        now = int(time.time())
        claims = {"iss": self.issuer, "sub": "sub-" + hashlib.sha256(
            grant.email.encode()).hexdigest()[:12], "aud": grant.client_id, "iat": now,
            "exp": now + 300, "nonce": grant.nonce, "email": grant.email,
            "email_verified": self.people.get(grant.email, False)}
        key: Any = self.key
        if self.tamper == "nonce":
            claims["nonce"] = "another"
        elif self.tamper == "audience":
            claims["aud"] = "someone-else"
        elif self.tamper == "signature":
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.tamper = ""
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": self.kid})

    def jwks(self) -> dict[str, Any]:
        public = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [{**public, "kid": self.kid, "use": "sig", "alg": "RS256"}]}

    def start(self) -> None:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes, kind: str = "application/json",
                      headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def _json(self, status: int, data: dict[str, Any]) -> None:
                self._send(status, json.dumps(data).encode())

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                if url.path == "/.well-known/openid-configuration":
                    self._json(200, {
                        "issuer": provider.issuer,
                        "authorization_endpoint": provider.issuer + "/authorize",
                        "token_endpoint": provider.issuer + "/token",
                        "jwks_uri": provider.issuer + "/jwks",
                        "response_types_supported": ["code"],
                        "subject_types_supported": ["public"],
                        "id_token_signing_alg_values_supported": ["RS256"],
                        "code_challenge_methods_supported": ["S256"]})
                elif url.path == "/jwks":
                    self._json(200, provider.jwks())
                elif url.path == "/authorize":
                    wanted = ("response_type", "client_id", "redirect_uri", "state", "nonce",
                              "code_challenge", "code_challenge_method")
                    if any(not query.get(k) for k in wanted) or query["response_type"] != \
                            "code" or query["code_challenge_method"] != "S256" or \
                            query["client_id"] != provider.client_id or \
                            "openid" not in query.get("scope", "").split():
                        self._send(400, b"bad authorization request", "text/plain")
                        return
                    hidden = "".join(f'<input type="hidden" name="{k}" value="{html.escape(v)}">'
                                     for k, v in query.items())
                    page = (f"<!doctype html><title>Test provider</title><form method=post "
                            f'action="/authorize">{hidden}<label>Email <input id="email" '
                            f'name="email"></label><button id="approve">Sign in</button>'
                            "</form>")
                    self._send(200, page.encode(), "text/html")
                else:
                    self._send(404, b"not found", "text/plain")

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
                if self.path == "/authorize":
                    code = secrets.token_urlsafe(24)
                    provider.grants[code] = Grant(form["client_id"], form["redirect_uri"],
                                                  form["code_challenge"], form["nonce"],
                                                  form.get("email", ""))
                    target = form["redirect_uri"] + "?" + urlencode(
                        {"code": code, "state": form["state"]})
                    self._send(302, b"", "text/plain", {"Location": target})
                elif self.path == "/token":
                    provider.token_requests.append(form)
                    self._token(form)
                else:
                    self._send(404, b"not found", "text/plain")

            def _token(self, form: dict[str, str]) -> None:
                scheme, _, value = self.headers.get("Authorization", "").partition(" ")
                client = base64.b64decode(value).decode() if scheme == "Basic" else ""
                if client != f"{provider.client_id}:{provider.client_secret}":
                    self._json(401, {"error": "invalid_client"})
                    return
                grant = provider.grants.pop(form.get("code", ""), None)
                verifier = form.get("code_verifier", "")
                challenge = base64.urlsafe_b64encode(
                    hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
                if grant is None or form.get("grant_type") != "authorization_code" \
                        or form.get("redirect_uri") != grant.redirect_uri \
                        or challenge != grant.challenge:
                    self._json(400, {"error": "invalid_grant"})
                    return
                self._json(200, {"access_token": secrets.token_urlsafe(16),
                                 "token_type": "Bearer", "expires_in": 300,
                                 "id_token": provider.id_token(grant)})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
