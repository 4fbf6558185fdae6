"""The ASGI application: the JSON API, the Nix cache protocol, metrics and health.

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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from nixfarm import __version__
from nixfarm.config import SETTINGS_VARIABLE, Settings
from nixfarm.edge import accesslog
from nixfarm.edge.layout import EdgeLayout
from nixfarm.edge.process import die_with_parent
from nixfarm.errors import NixfarmError
from nixfarm.farm import Farm
from nixfarm.metrics import Metrics
from nixfarm.runner import embedded as embedded_runner
from nixfarm.server import cache_routes, errors, registry_routes
from nixfarm.server.api import caches as caches_api
from nixfarm.server.api import jobs as jobs_api
from nixfarm.server.api import runners as runners_api
from nixfarm.server.api import secrets as secrets_api
from nixfarm.server.api import tokens as tokens_api
from nixfarm.server.drain import DrainMiddleware
from nixfarm.server.metering import MetricsMiddleware, exposition
from nixfarm.server.pages import jobs as jobs_web


async def health(request: Request) -> Response:
    farm: Farm = request.app.state.farm
    async with farm.db.session() as s:
        from sqlalchemy import text

        await s.execute(text("SELECT 1"))
    return JSONResponse({"status": "ok", "version": __version__})


def create_app(settings: Settings) -> FastAPI:
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        farm = await Farm.open(settings)
        app.state.farm = farm
        try:
            async with contextlib.AsyncExitStack() as stack:
                if settings.edge.server == "nginx":  # count what nginx answers itself
                    await stack.enter_async_context(
                        accesslog.following(EdgeLayout.of(settings), metrics))
                await stack.enter_async_context(farm.background())
                runner = asyncio.create_task(embedded_runner.serve(settings))
                try:
                    yield
                finally:
                    runner.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await runner
        finally:
            await farm.close()

    app = FastAPI(
        title="nixfarm",
        version=__version__,
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.metrics = metrics
    app.state.settings = settings
    app.include_router(caches_api.router)
    app.include_router(tokens_api.router)
    app.include_router(jobs_api.router)
    app.include_router(runners_api.router)
    app.include_router(secrets_api.router)
    app.include_router(jobs_web.router)
    # The Nix cache and registry protocols are the hot paths: match them first.
    app.router.routes[0:0] = [*cache_routes.routes, *registry_routes.routes]
    app.router.routes.append(Route("/metrics", exposition, methods=["GET"]))
    app.router.routes.append(Route("/healthz", health, methods=["GET"]))
    app.add_exception_handler(NixfarmError, errors.handle)
    app.add_middleware(DrainMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def from_environment() -> FastAPI:
    """Granian's factory: the settings come from the parent process."""
    die_with_parent()  # a worker of a killed supervisor would serve on, orphaned
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the embedded runner's calls
    return create_app(Settings.model_validate_json(os.environ[SETTINGS_VARIABLE]))
