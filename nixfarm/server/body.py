"""Request bodies small enough to take whole (a narinfo, a log chunk), read with a bound.

Large bodies (NARs, artifacts) are streamed to their service instead; these are the
few a route needs in memory, and the bound is checked as the chunks arrive, so a
client cannot make the server hold more than ``limit`` bytes of it.
"""

from __future__ import annotations

from starlette.requests import Request

from nixfarm.errors import InvalidInput


async def read_bounded(request: Request, limit: int, too_large: str) -> bytes:
    """The whole body; ``InvalidInput(too_large)`` once it passes ``limit`` bytes."""
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise InvalidInput(too_large, field="body")
    return bytes(data)
