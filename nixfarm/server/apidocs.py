"""The API's browsable docs (Swagger UI at ``/api/docs``), served whole by the farm.

A farm often runs where no CDN is reachable, so the page loads Swagger UI from the
farm itself: the JavaScript, stylesheet and icon come with the ``fastapi-offline``
package (Swagger UI 5, which reads the OpenAPI 3.1 FastAPI writes) and are served
from ``/api/docs/assets/``. The page names no other host.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi.openapi.docs import get_swagger_ui_html
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

#: Where Swagger UI's files are, in the installed package.
ASSETS = str(files("fastapi_offline") / "static")


def routes(openapi_path: str) -> list[BaseRoute]:
    """``/docs`` and ``/docs/assets/...``, relative to the API's mount (``/api``), as is
    ``openapi_path``."""

    async def page(request: Request) -> Response:
        mount = request.scope.get("root_path", "").rstrip("/")
        assets = f"{mount}/docs/assets"
        return get_swagger_ui_html(
            openapi_url=mount + openapi_path, title="nixfarm API",
            swagger_js_url=f"{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{assets}/swagger-ui.css",
            swagger_favicon_url=f"{assets}/favicon.png")

    return [Route("/docs", page, methods=["GET"]),
            Mount("/docs/assets", StaticFiles(directory=ASSETS))]
