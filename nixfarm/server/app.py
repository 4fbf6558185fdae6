"""The ASGI application: one ``Mount`` per protocol, each with its own error handlers.

    /metrics, /healthz      Prometheus exposition, health
    /api        JSON API    FastAPI routes; OpenAPI at /api/v1/openapi.json, docs at /api/docs
    /cache      Nix cache   plain-text errors (Nix prints them)
    /v2         OCI         the registry's {"errors": [...]} envelope
    /registry   registry    the token endpoint and the build board: plain text
    (the rest)  web pages   pages in the site's look (server/pages/site.py)

How each protocol answers an error is ``nixfarm.server.errors``; which protocol a
request belongs to is decided here, by the route it matched.

``create_app(settings)`` is what tests and ``nixfarm up`` use; Granian imports
``from_environment`` in its worker, which reads the settings ``nixfarm up`` handed
over in ``_NIXFARM_SETTINGS`` (JSON), so the worker runs with exactly the parent's
validated configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from sqlalchemy import text
from starlette.middleware import Middleware
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from nixfarm import __version__
from nixfarm.config import SETTINGS_VARIABLE, WORKERS_VARIABLE, Settings
from nixfarm.edge import accesslog
from nixfarm.edge.layout import EdgeLayout
from nixfarm.edge.process import die_with_parent
from nixfarm.farm import Farm
from nixfarm.metrics import Metrics
from nixfarm.runner import embedded as embedded_runner
from nixfarm.server import (
    apidocs,
    cache_routes,
    errors,
    netboot_routes,
    pages,
    registry_routes,
    releases,
)
from nixfarm.server.api import builders as builders_api
from nixfarm.server.api import caches as caches_api
from nixfarm.server.api import jobs as jobs_api
from nixfarm.server.api import runners as runners_api
from nixfarm.server.api import schedules as schedules_api
from nixfarm.server.api import secrets as secrets_api
from nixfarm.server.api import shells as shells_api
from nixfarm.server.api import tokens as tokens_api
from nixfarm.server.auth import farm_of
from nixfarm.server.drain import DrainMiddleware
from nixfarm.server.errors import Handler
from nixfarm.server.metering import MetricsMiddleware, exposition
from nixfarm.server.pages import site


async def health(request: Request) -> Response:
    async with farm_of(request).db.session() as s:
        await s.execute(text("SELECT 1"))
    return JSONResponse({"status": "ok", "version": __version__})


async def to_registry(request: Request) -> Response:
    """``/v2`` is the registry's ``/v2/`` (the spec's base route has the slash)."""
    return RedirectResponse("/v2/", 308)


class ProtocolMount(Mount):
    """The routes of one protocol under ``path``, its errors answered by ``handlers``.

    Everything under ``path`` is the protocol's, whatever its characters: Starlette's
    own mount pattern (``.*``) stops at a newline, and a ``%0A`` in a URL would then
    fall through to no protocol at all.
    """

    def __init__(self, path: str, routes: list[BaseRoute],
                 handlers: Mapping[int | type[Exception], Handler]) -> None:
        super().__init__(path, routes=routes, middleware=[
            Middleware(ExceptionMiddleware, handlers=handlers)])
        self.path_regex = re.compile(self.path_regex.pattern, re.DOTALL)


def api_routes() -> list[BaseRoute]:
    """The JSON API's routes, relative to ``/api``; every one documents the error
    answers of ``errors.API_RESPONSES``."""
    api = APIRouter(responses=errors.API_RESPONSES)
    for module in (caches_api, tokens_api, jobs_api, runners_api, secrets_api, builders_api,
                   netboot_routes, releases, schedules_api, shells_api):
        api.include_router(module.router)
    return list(api.routes)


def openapi(app: FastAPI, routes: list[BaseRoute]) -> dict[str, Any]:
    """The API's OpenAPI document: paths as clients call them (``/api/v1/...``), and the
    error answers the API really gives (FastAPI's 422 is a 400 here: see ``errors``)."""
    if app.openapi_schema is None:
        document = get_openapi(title="nixfarm", version=__version__, routes=routes,
                               description="The JSON API of nixfarm: caches, tokens, "
                               "jobs, secrets, and the runner protocol.")
        document["paths"] = {"/api" + path: item for path, item in document["paths"].items()}
        for item in document["paths"].values():
            for operation in item.values():
                operation.get("responses", {}).pop("422", None)
        schemas = document.get("components", {}).get("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        app.openapi_schema = document
    return app.openapi_schema


def create_app(settings: Settings, *, workers: int = 0) -> FastAPI:
    """``workers``: how many processes serve this app (0: not known)."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        farm = await Farm.open(settings, workers=workers)
        app.state.farm = farm
        try:
            async with contextlib.AsyncExitStack() as stack:
                if settings.edge.server == "nginx":  # count what nginx answers itself
                    await stack.enter_async_context(
                        accesslog.following(EdgeLayout.of(settings), metrics))
                await stack.enter_async_context(farm.background())
                # Builders netboot: their image, made now (unless told to wait for the
                # first boot, as `up --demo` does).
                if settings.builders.pools and settings.builders.prepare_netboot:
                    preparing = asyncio.create_task(netboot_routes.prepare(settings))
                    stack.callback(preparing.cancel)
                runner = asyncio.create_task(embedded_runner.serve(settings))
                try:
                    yield
                finally:
                    runner.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await runner
        finally:
            await farm.close()

    # The OpenAPI document and the docs are the API's own routes (under /api), not
    # FastAPI's, which would live outside the API's error handling.
    app = FastAPI(title="nixfarm", version=__version__, openapi_url=None, docs_url=None,
                  redoc_url=None, lifespan=lifespan, exception_handlers=errors.PLAIN)
    app.state.metrics = metrics
    app.state.settings = settings
    api = api_routes()

    async def openapi_json(request: Request) -> Response:
        return JSONResponse(openapi(app, api))

    app.openapi = lambda: openapi(app, api)  # type: ignore[method-assign]
    app.router.routes[:] = [
        # The Nix cache and registry protocols are the hot paths: matched first.
        ProtocolMount("/cache", cache_routes.routes, errors.PLAIN),
        ProtocolMount("/v2", registry_routes.oci_routes, errors.OCI),
        Route("/v2", to_registry, methods=["GET", "HEAD"]),
        ProtocolMount("/registry", registry_routes.board_routes, errors.PLAIN),
        ProtocolMount("/api", [*api, Route("/v1/openapi.json", openapi_json, methods=["GET"]),
                          *apidocs.routes("/v1/openapi.json")], errors.JSON_API),
        Route("/metrics", exposition, methods=["GET"]),
        Route("/healthz", health, methods=["GET"]),
        ProtocolMount("/builders", netboot_routes.routes, errors.PLAIN),  # what machines boot
        ProtocolMount("/releases", releases.routes, errors.PLAIN),  # release sources (git)
        ProtocolMount("", pages.routes(), site.ERRORS),  # web pages
    ]
    app.add_middleware(DrainMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def from_environment() -> FastAPI:
    """Granian's factory: the settings come from the parent process."""
    die_with_parent()  # a worker of a killed supervisor would serve on, orphaned
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the embedded runner's calls
    return create_app(Settings.model_validate_json(os.environ[SETTINGS_VARIABLE]),
                      workers=int(os.environ.get(WORKERS_VARIABLE) or 0))
