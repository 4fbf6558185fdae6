"""The registry's pages: the images it has built (layers, sizes, pull command, build
log) and the builds it is running or ran recently (the build board).

When the registry requires authentication to pull, its pages need ``registry:pull``
too: an image's layers say what is in it.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from nixfarm.registry import catalogue
from nixfarm.scopes import REGISTRY_PULL
from nixfarm.server.auth import farm_of
from nixfarm.server.pages import site

router = APIRouter(include_in_schema=False)


def pull_command(base_url: str, reference: str) -> str:
    """How to pull ``reference`` (``name:tag``) from this farm: plain HTTP needs podman
    told so."""
    host = base_url.split("://", 1)[-1].rstrip("/")
    if base_url.startswith("https://"):
        return f"podman pull {host}/{reference}"
    return f"podman pull --tls-verify=false {host}/{reference}"


def _check(request: Request, who: site.Viewer) -> None:
    if farm_of(request).settings.registry.require_auth:
        who.require(REGISTRY_PULL)


@router.get("/images")
async def images_page(request: Request, page: int = 1, who: site.Viewer = site.VIEWER
                      ) -> Response:
    _check(request, who)
    farm = farm_of(request)
    images, more = await catalogue.built_images(farm.store, page)
    board = farm.registry.builds.recent()
    return site.render(request, "images.html", {
        "images": images, "page": page, "more": more, "builds": board,
        "source": farm.settings.registry.source.kind,
        "example": pull_command(farm.settings.base_url, "shell/hello:latest")})


@router.get("/images/{key}")
async def image_page(request: Request, key: str, who: site.Viewer = site.VIEWER) -> Response:
    _check(request, who)
    farm = farm_of(request)
    image = await catalogue.built_image(farm.store, key)
    build = farm.registry.builds.get(image.build_id) if image.build_id else None
    return site.render(request, "image.html", {
        "image": image, "digests": image.digests(), "facts": image.config_facts(),
        "build": build, "pull": pull_command(farm.settings.base_url, image.name)
        if image.name else None})
