"""How the app hands answers to the edge (nginx; see nixfarm/edge)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response

from nixfarm.edge.layout import ACCEL_PREFIX
from nixfarm.edge.tree import EdgeTree
from nixfarm.server.auth import farm_of

# Keys nginx can be handed verbatim (a '?' would start a query string, '%' an escape).
_PLAIN_KEY = re.compile(r"[A-Za-z0-9._/-]+")


def edge_of(request: Request) -> EdgeTree | None:
    """The published tree when nginx is in front of this app, else None."""
    edge: EdgeTree | None = farm_of(request).caches.edge
    return edge


def accel(request: Request, key: str, local_path: Path | None, media_type: str,
          headers: Mapping[str, str] | None = None) -> Response | None:
    """Let nginx send the stored file ``key`` (sendfile, Range and HEAD included);
    None when there is no edge, the file is not local (``local_path``, as the caller
    already found it), or the key needs escaping."""
    if edge_of(request) is None or local_path is None or not _PLAIN_KEY.fullmatch(key):
        return None
    return Response(b"", 200, media_type=media_type,
                    headers={**(headers or {}), "X-Accel-Redirect": ACCEL_PREFIX + quote(key)})
