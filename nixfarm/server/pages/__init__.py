"""The web UI's routes (HTML pages rendered from nixfarm/web/templates).

``site`` is what every page shares (who is looking, forms, errors: read its notes);
each other module is one group of pages with its own ``router``. ``routes()`` is the
page Mount's route list (``server/app.py``): add a new module's router there.
"""

from __future__ import annotations

from starlette.routing import BaseRoute


def routes() -> list[BaseRoute]:
    from nixfarm.server.pages import (
        badges,
        caches,
        images,
        jobs,
        oidc,
        runners,
        signin,
        site,
        tokens,
    )

    found: list[BaseRoute] = [*site.static_routes()]
    for module in (signin, oidc, jobs, caches, images, runners, tokens, badges):
        found.extend(module.router.routes)
    return found
