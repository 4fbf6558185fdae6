"""Sending a stored file (a NAR, a listing, a build log, a blob): one decision chain.

    nginx in front and the file local  ->  X-Accel-Redirect: nginx sends it (sendfile,
                                           Range and HEAD included; see nixfarm/edge)
    HEAD                               ->  the headers, answered here
    a presigned URL (S3)               ->  307 to it
    a local file                       ->  FileResponse (Range; pathsend under Granian)
    only the store                     ->  streamed, opened before the status line

HEAD is answered here even for S3: a presigned URL is signed for GET, and a HEAD that
followed the redirect would fail (``nix copy`` would then upload again). A file gone
from the store is a 404, not a 200 with a broken body.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response, StreamingResponse

from nixfarm.edge.layout import ACCEL_PREFIX
from nixfarm.server.auth import farm_of
from nixfarm.storage.base import Download

# Keys nginx can be handed verbatim (a '?' would start a query string, '%' an escape).
_PLAIN_KEY = re.compile(r"[A-Za-z0-9._/-]+")
#: Stored files are content-addressed: what a name gives never changes.
IMMUTABLE = {"Cache-Control": "public, max-age=31536000, immutable"}


async def send(request: Request, found: Download, media_type: str,
               headers: Mapping[str, str] | None = None) -> Response:
    """Answer ``request`` with the stored file ``found``; ``headers`` go with every answer,
    and ``Cache-Control: immutable`` with every answer that carries the file."""
    common = dict(headers or {})
    kept = {**common, **IMMUTABLE}
    if farm_of(request).edge is not None and found.local_path is not None \
            and _PLAIN_KEY.fullmatch(found.key):
        return Response(b"", 200, media_type=media_type,
                        headers={**kept, "X-Accel-Redirect": ACCEL_PREFIX + quote(found.key)})
    sized = {**kept, "Content-Length": str(found.size)}
    if request.method == "HEAD":
        return Response(None, 200, media_type=media_type, headers=sized)
    if found.url is not None:
        return RedirectResponse(found.url, 307, headers=common)  # the URL expires
    if found.local_path is not None:
        return FileResponse(found.local_path, media_type=media_type, headers=kept)
    chunks = await farm_of(request).store.get(found.key)
    return StreamingResponse(chunks, media_type=media_type, headers=sized)
