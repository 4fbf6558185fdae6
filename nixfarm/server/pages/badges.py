"""SVG status badges for READMEs: the newest public job with a tag, or with a set of tags.

    /badges/tag/<tag>.svg          jobs tagged <tag>
    /badges/name/<a>/<b>.svg       jobs tagged both <a> and <b> (a name as builds.sr.ht
                                   writes one: the tags of a repository's manifest,
                                   e.g. ``nixfarm/test.yml``)

Only public jobs count (``db/badges``): the badge of a tag that only private jobs carry
says "unknown", exactly like a tag nobody used, so a badge reveals nothing a visitor
could not see on the jobs page. Badges are cached briefly (a minute) by browsers and
image proxies, and carry an ETag: a proxy revalidating an unchanged badge gets a 304.
"""

from __future__ import annotations

import hashlib
from xml.sax.saxutils import escape

from fastapi import APIRouter, Request
from starlette.responses import Response

from nixfarm.db import badges
from nixfarm.errors import InvalidInput
from nixfarm.server.auth import farm_of

router = APIRouter(include_in_schema=False)

#: Label and status colours (white text on each has a contrast ratio of at least 4.5).
_COLOURS = {"success": "#2e7d32", "failed": "#c62828", "timeout": "#c62828",
            "running": "#8a5300", "queued": "#8a5300", "pending": "#8a5300"}
_GREY = "#595959"
_MAX_AGE = 60


def _text_width(text: str) -> int:
    """Roughly how wide ``text`` is in 11px Verdana (wide letters count more)."""
    wide = sum(1 for c in text if c in "mwMW@%")
    narrow = sum(1 for c in text if c in "ijlt.,:;!|' ")
    return round(7.0 * (len(text) - wide - narrow) + 10.0 * wide + 4.0 * narrow)


def render(label: str, status: str) -> str:
    """A flat badge: ``label`` on grey, ``status`` on its colour."""
    left, right = _text_width(label) + 12, _text_width(status) + 12
    width = left + right
    colour = _COLOURS.get(status, _GREY)
    label_x, status_x = left / 2, left + right / 2
    title = escape(f"{label}: {status}")
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="20" role="img" '
        f'aria-label="{title}"><title>{title}</title>'
        f'<rect width="{left}" height="20" fill="{_GREY}"/>'
        f'<rect x="{left}" width="{right}" height="20" fill="{colour}"/>'
        '<g fill="#fff" text-anchor="middle" font-family="Verdana,DejaVu Sans,sans-serif" '
        'font-size="11">'
        f'<text x="{label_x:g}" y="14">{escape(label)}</text>'
        f'<text x="{status_x:g}" y="14">{escape(status)}</text></g></svg>')


async def _badge(request: Request, tags: list[str]) -> Response:
    async with farm_of(request).db.session() as s:
        found = await badges.public_status(s, tags)
    status = found[1] if found is not None else "unknown"
    body = render("build", status).encode()
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = {"Cache-Control": f"public, max-age={_MAX_AGE}", "ETag": etag,
               "X-Content-Type-Options": "nosniff"}
    if etag in {t.strip() for t in request.headers.get("if-none-match", "").split(",")}:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="image/svg+xml", headers=headers)


@router.get("/badges/tag/{tag:path}.svg")
async def tag_badge(request: Request, tag: str) -> Response:
    return await _badge(request, [tag])


@router.get("/badges/name/{name:path}.svg")
async def name_badge(request: Request, name: str) -> Response:
    tags = [part for part in name.split("/") if part]
    if not tags:
        raise InvalidInput("a badge name needs at least one tag: /badges/name/<tag>/....svg",
                           field="name")
    return await _badge(request, tags)
