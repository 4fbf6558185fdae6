"""Signing in through an OpenID Connect provider: the authorization code flow with PKCE.

::

    browser ─ GET /sign-in/oidc ─> farm: a fresh state, nonce and PKCE verifier go into
                                   a signed, short-lived cookie; 302 to the provider
    browser ─ the provider signs the person in ─> GET /sign-in/oidc/callback?code&state
    farm ─ POST the provider's token endpoint (code, verifier, client secret) ─> ID token
    farm: checks the ID token (signed by a key of the provider's JWKS; iss, aud, exp,
          nonce), maps its claim (``[web.oidc] claim``) to a token through
          ``[web.oidc] principals``, and opens a session holding that token

The state ties the callback to the browser that started it (no signing in someone
else's browser as you); the nonce ties the ID token to this sign-in; PKCE keeps a
stolen code useless. The cookie is signed with a key all of the farm's servers derive
alike, so any server may answer the callback. The provider's discovery document and
keys are remembered for ``discovery_seconds``; a key id not among them fetches them
again once (the provider rotated its keys).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt
from fastapi import APIRouter, Request
from starlette.responses import RedirectResponse, Response

from nixfarm.config import OidcSettings
from nixfarm.server.auth import farm_of
from nixfarm.server.pages import site
from nixfarm.server.pages.signin import open_session_response

log = logging.getLogger("nixfarm.server.oidc")
router = APIRouter(include_in_schema=False)

COOKIE = "nixfarm_oidc"
_COOKIE_PATH = "/sign-in/oidc"
#: How long a person may take at the provider before the sign-in must start again.
FLOW_SECONDS = 600
_ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "EdDSA"]


class SignInFailed(Exception):
    """A sign-in that cannot go on; the message is for the person, on the sign-in page."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Provider:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str


#: issuer -> (when read, its discovery document); jwks_uri -> (when read, its keys).
_providers: dict[str, tuple[float, Provider]] = {}
_keys: dict[str, tuple[float, jwt.PyJWKSet]] = {}


def _fresh(config: OidcSettings, found: tuple[float, Any] | None) -> Any:
    """The remembered value if it is younger than ``discovery_seconds``, else None."""
    if found is None or time.monotonic() - found[0] >= config.discovery_seconds:
        return None
    return found[1]


async def _get_json(client: httpx.AsyncClient, url: str, what: str) -> dict[str, Any]:
    try:
        answer = await client.get(url)
        answer.raise_for_status()
        data = answer.json()
    except (httpx.HTTPError, ValueError) as e:
        log.warning("OpenID Connect %s at %s: %s", what, url, e)
        raise SignInFailed(f"The identity provider's {what} could not be read.", 502) from e
    if not isinstance(data, dict):
        raise SignInFailed(f"The identity provider's {what} is not a JSON object.", 502)
    return data


async def provider(config: OidcSettings, client: httpx.AsyncClient) -> Provider:
    found: Provider | None = _fresh(config, _providers.get(config.issuer))
    if found is not None:
        return found
    issuer = config.issuer.rstrip("/")
    document = await _get_json(client, f"{issuer}/.well-known/openid-configuration",
                               "discovery document")
    if str(document.get("issuer", "")).rstrip("/") != issuer:
        raise SignInFailed("The identity provider's discovery document names another "
                           "issuer.", 502)
    try:
        found = Provider(str(document["issuer"]), str(document["authorization_endpoint"]),
                         str(document["token_endpoint"]), str(document["jwks_uri"]))
    except KeyError as e:
        raise SignInFailed(f"The identity provider's discovery document has no {e}.",
                           502) from None
    _providers[config.issuer] = (time.monotonic(), found)
    return found


async def signing_key(config: OidcSettings, where: Provider, client: httpx.AsyncClient,
                      kid: str | None) -> jwt.PyJWK:
    for fresh in (False, True):
        keys: jwt.PyJWKSet | None = None if fresh else _fresh(config, _keys.get(where.jwks_uri))
        if keys is None:
            try:
                keys = jwt.PyJWKSet.from_dict(await _get_json(client, where.jwks_uri, "keys"))
            except jwt.PyJWKSetError as e:
                raise SignInFailed("The identity provider's keys are not usable.", 502) from e
            _keys[where.jwks_uri] = (time.monotonic(), keys)
        for key in keys.keys:
            if kid is None or key.key_id == kid:
                return key
    raise SignInFailed("The ID token is signed with a key the provider does not list.")


# --- the state cookie ---------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _seal(key: bytes, payload: dict[str, Any]) -> str:
    body = _b64(json.dumps(payload, separators=(",", ":")).encode())
    return body + "." + _b64(hmac.new(key, body.encode(), hashlib.sha256).digest())


def _open(key: bytes, sealed: str) -> dict[str, Any] | None:
    body, _, mac = sealed.partition(".")
    good = _b64(hmac.new(key, body.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(mac.encode(), good.encode()):
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except ValueError:
        return None
    if not isinstance(payload, dict) or payload.get("until", 0) < time.time():
        return None
    return payload


def _cookie_key(request: Request) -> bytes:
    return farm_of(request).builds.secrets.signing_key("web-oidc-state")


def _redirect_uri(request: Request) -> str:
    return farm_of(request).settings.base_url + "/sign-in/oidc/callback"


def _failed(request: Request, error: SignInFailed, next_path: str = "/") -> Response:
    response = site.render(request, "sign-in.html", {
        "next": site.local_target(next_path), "oidc": True, "problem": error.message},
        status=error.status)
    response.delete_cookie(COOKIE, path=_COOKIE_PATH)
    return response


# --- the routes ---------------------------------------------------------------------


@router.get("/sign-in/oidc")
async def start(request: Request, next: str = "/", who: site.Viewer = site.VIEWER) -> Response:
    config = farm_of(request).settings.web.oidc
    if not config.enabled:
        return _failed(request, SignInFailed("This farm has no identity provider "
                                             "configured: sign in with a token.", 404))
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            where = await provider(config, client)
    except SignInFailed as e:
        return _failed(request, e, next)
    state, nonce, verifier = (secrets.token_urlsafe(32) for _ in range(3))
    challenge = _b64(hashlib.sha256(verifier.encode()).digest())
    query = urlencode({
        "response_type": "code", "client_id": config.client_id,
        "redirect_uri": _redirect_uri(request), "scope": "openid email profile",
        "state": state, "nonce": nonce, "code_challenge": challenge,
        "code_challenge_method": "S256"})
    separator = "&" if "?" in where.authorization_endpoint else "?"
    response = RedirectResponse(where.authorization_endpoint + separator + query, 302)
    sealed = _seal(_cookie_key(request), {
        "state": state, "nonce": nonce, "verifier": verifier,
        "next": site.local_target(next), "until": time.time() + FLOW_SECONDS})
    response.set_cookie(COOKIE, sealed, max_age=FLOW_SECONDS, path=_COOKIE_PATH,
                        httponly=True, samesite="lax", secure=site.secure_cookies(request))
    return response


@router.get("/sign-in/oidc/callback")
async def callback(request: Request, who: site.Viewer = site.VIEWER) -> Response:
    flow = _open(_cookie_key(request), request.cookies.get(COOKIE, ""))
    next_path = str(flow["next"]) if flow else "/"
    try:
        subject = await _finish(request, flow)
    except SignInFailed as e:
        return _failed(request, e, next_path)
    farm = farm_of(request)
    config = farm.settings.web.oidc
    name = config.principals.get(subject)
    found = await farm.tokens.named(name) if name else []
    if len(found) != 1:
        log.warning("OpenID Connect sign-in of %r refused: %s", subject,
                    "not in [web.oidc] principals" if not name
                    else f"{len(found)} live tokens are called {name!r}")
        return _failed(request, SignInFailed(
            f"{subject} may not sign in to this farm." if not name else
            f"{subject} maps to token {name!r}, which is not exactly one live token.", 403),
            next_path)
    previous = request.cookies.get(site.SESSION_COOKIE)
    if previous:
        await farm.sessions.close(previous)
    _, secret = await farm.sessions.open(found[0].token_id, "oidc", subject)
    log.info("%s signed in through OpenID Connect as token %r", subject, name)
    response = open_session_response(request, secret, next_path)
    response.delete_cookie(COOKIE, path=_COOKIE_PATH)
    return response


async def _finish(request: Request, flow: dict[str, Any] | None) -> str:
    """The signed-in person's claim value, from the provider's answer; or SignInFailed."""
    config = farm_of(request).settings.web.oidc
    params = request.query_params
    if not config.enabled:
        raise SignInFailed("This farm has no identity provider configured.", 404)
    if params.get("error"):
        raise SignInFailed(f"The identity provider refused: {params.get('error')} "
                           f"{params.get('error_description', '')}".strip())
    if flow is None:
        raise SignInFailed("This sign-in expired or was started in another browser: "
                           "start again.")
    if not hmac.compare_digest(str(params.get("state", "")).encode(),
                               str(flow["state"]).encode()):
        raise SignInFailed("The sign-in's state does not match: start again.")
    code = params.get("code")
    if not code:
        raise SignInFailed("The identity provider sent no authorization code.")
    async with httpx.AsyncClient(timeout=10) as client:
        where = await provider(config, client)
        try:
            answer = await client.post(where.token_endpoint, auth=(
                config.client_id, config.client_secret), data={
                "grant_type": "authorization_code", "code": code,
                "redirect_uri": _redirect_uri(request), "client_id": config.client_id,
                "code_verifier": flow["verifier"]})
            tokens = answer.json()
        except (httpx.HTTPError, ValueError) as e:
            log.warning("OpenID Connect token request failed: %s", e)
            raise SignInFailed("The identity provider's token endpoint did not answer.",
                               502) from e
        if answer.status_code != 200 or not isinstance(tokens, dict) \
                or not isinstance(tokens.get("id_token"), str):
            log.warning("OpenID Connect token request: %s %s", answer.status_code,
                        answer.text[:300])
            raise SignInFailed("The identity provider did not give an ID token.")
        id_token = tokens["id_token"]
        try:
            header = jwt.get_unverified_header(id_token)
        except jwt.PyJWTError as e:
            raise SignInFailed("The ID token is not a JWT.") from e
        key = await signing_key(config, where, client, header.get("kid"))
    try:
        claims = jwt.decode(id_token, key=key, algorithms=_ALGORITHMS,
                            audience=config.client_id, issuer=where.issuer, leeway=60,
                            options={"require": ["exp", "iat", "sub", "iss", "aud"]})
    except jwt.PyJWTError as e:
        log.warning("OpenID Connect ID token refused: %s", e)
        raise SignInFailed(f"The ID token was refused: {e}.") from e
    if not hmac.compare_digest(str(claims.get("nonce", "")).encode(),
                               str(flow["nonce"]).encode()):
        raise SignInFailed("The ID token was not made for this sign-in (nonce).")
    if config.claim == "email":
        if claims.get("email_verified") is not True or not claims.get("email"):
            raise SignInFailed("The identity provider did not vouch for an email address.",
                               403)
        return str(claims["email"])
    return str(claims["sub"])
