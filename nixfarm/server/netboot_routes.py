"""The boot chain a builder's machine follows, and its console log (docs/builders.md).

Per builder, outside the JSON API (firmware asks, with no credentials):

    GET /builders/<id>/boot.ipxe   the iPXE script: kernel, initramfs, command line
    GET /builders/<id>/vmlinuz     the netboot image's kernel
    GET /builders/<id>/initrd      its initramfs

The script names the kernel and initramfs by relative URLs, so a machine that reached
the farm by another address than its public URL (the local provider's guests see the
host as 10.0.2.2) fetches them the same way. They are served only while the builder
is being created or is booting: nothing secret is in them (the image is the same for
every builder; the command line says where the user data is, never what it holds),
but nothing needs them later either. The image is made on the first request
(``nixfarm.netboot.image``: seconds, or a minute if the kernel must be fetched first)
and kept for the life of the process.

The console, in the JSON API:

    PUT /api/v1/builders/<id>/console/<seq>   the builder's own runner token: chunk seq
    GET /api/v1/builders/<id>/console         admin: the log from ``offset`` on

Chunks are objects ``builders/<id>/console/<seq:08d>`` (written once; a retried
chunk is ignored), as job logs are.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from nixfarm.config import Settings
from nixfarm.db import builders as q
from nixfarm.errors import Forbidden, NixfarmError, NotFound
from nixfarm.netboot.image import NetbootImage, netboot_image
from nixfarm.scopes import ADMIN, RUNNER
from nixfarm.server.auth import farm_of, require
from nixfarm.server.body import read_bounded
from nixfarm.storage.base import ObjectStore
from nixfarm.wire.base import MAX_INT, Id

#: The kernel's command line before the provider's words (``Provider.boot_args``):
#: serial and VGA consoles, no reboot loop on a panic, and no crypto self-tests (a
#: fifth of the boot under TCG).
KERNEL_ARGS = "console=tty0 console=ttyS0,115200 panic=-1 quiet cryptomgr.notests"
MAX_CONSOLE_CHUNK = 1 << 20
log = logging.getLogger("nixfarm.netboot")
_BOOTING = ("creating", "booting")
_images: dict[Path, NetbootImage] = {}
_lock = asyncio.Lock()


async def image_for(settings: Settings) -> NetbootImage:
    """The netboot image for this farm's settings, made on first use."""
    root = settings.data_dir / "netboot"
    async with _lock:
        made = _images.get(root)
        if made is None or not (made.kernel.exists() and made.initrd.exists()):
            source = settings.registry.source
            nix_source = Path(source.location) if source.kind == "path" and source.location \
                else None
            made = _images[root] = await netboot_image(root, dict(settings.nix_options),
                                                       nix_source)
        return made


async def prepare(settings: Settings) -> None:
    """Make the image ahead of the first builder (a farm with pools calls this at start):
    a machine's firmware waits only so long for its first download."""
    try:
        await image_for(settings)
    except NixfarmError as e:
        log.warning("the netboot image could not be made: %s", e.message)


def ipxe_script(boot_args: str) -> str:
    """The script: fetch the kernel and initramfs (again, until they come: the firmware
    gives up on a slow answer, such as the first one while the image is being made),
    booting with the provider's ``boot_args``."""
    return ("#!ipxe\n"
            "# nixfarm: the netboot image and its bootstrap (docs/builders.md)\n"
            ":fetch\n"
            f"kernel vmlinuz {KERNEL_ARGS} {boot_args} || goto again\n"
            "initrd initrd || goto again\n"
            "boot || goto again\n"
            ":again\n"
            "echo nixfarm: fetching the netboot image failed; trying again\n"
            "imgfree\n"
            "goto fetch\n")


async def _booting(request: Request) -> str:
    """The provider of the builder in the path, if it is booting; NotFound if not."""
    builder_id = request.path_params["builder_id"]
    if not builder_id.isdigit() or not 0 < int(builder_id) <= MAX_INT:
        raise NotFound(f"There is no builder {builder_id}.", kind="builder", name=builder_id)
    async with farm_of(request).db.session() as s:
        builder = await q.get_builder(s, int(builder_id))
    if builder.state not in _BOOTING:
        raise NotFound(f"Builder {builder_id} is {builder.state}: it boots no more.",
                       kind="builder", name=builder_id)
    return builder.provider


async def boot_script(request: Request) -> Response:
    provider = farm_of(request).builders.provider(await _booting(request))
    return PlainTextResponse(ipxe_script(provider.boot_args))


async def kernel(request: Request) -> Response:
    await _booting(request)
    image = await image_for(request.app.state.settings)
    return FileResponse(image.kernel, media_type="application/octet-stream")


async def initrd(request: Request) -> Response:
    await _booting(request)
    image = await image_for(request.app.state.settings)
    return FileResponse(image.initrd, media_type="application/octet-stream")


routes: list[BaseRoute] = [
    Route("/{builder_id}/boot.ipxe", boot_script, methods=["GET"]),
    Route("/{builder_id}/vmlinuz", kernel, methods=["GET", "HEAD"]),
    Route("/{builder_id}/initrd", initrd, methods=["GET", "HEAD"]),
]


# --- the console, in the JSON API -------------------------------------------------------

router = APIRouter(prefix="/v1", tags=["builders"])


def console_prefix(builder_id: int) -> str:
    """Where a builder's console chunks are stored, in order."""
    return f"builders/{builder_id}/console/"


@router.put("/builders/{builder_id}/console/{seq}", status_code=204)
async def put_console(request: Request, builder_id: Id,
                      seq: Annotated[int, PathParam(ge=0, le=99_999_999)]) -> Response:
    """Chunk ``seq`` (raw bytes) of the builder's console; only its own token may."""
    who = await require(request, RUNNER)
    farm = farm_of(request)
    async with farm.db.session() as s:
        builder = await q.get_builder(s, builder_id)
    if builder.token_id is None or builder.token_id != who.token_id:
        raise Forbidden(f"token {who.name!r} is not builder {builder_id}'s", scope=RUNNER)
    data = await read_bounded(request, MAX_CONSOLE_CHUNK,
                              f"a console chunk is at most {MAX_CONSOLE_CHUNK} bytes")
    key = f"{console_prefix(builder_id)}{seq:08d}"
    if await farm.store.stat(key) is None:
        await farm.store.put(key, data)
    return Response(status_code=204)


@router.get("/builders/{builder_id}/console", response_class=PlainTextResponse,
            responses={200: {"content": {"text/plain": {}}}})
async def get_console(request: Request, builder_id: Id,
                      offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0) -> Response:
    """What the builder's machine printed since its kernel started, from byte ``offset``:
    its boot, bootstrap and runner output. ``X-Console-Size`` is the whole log's size."""
    await require(request, ADMIN)
    farm = farm_of(request)
    async with farm.db.session() as s:
        await q.get_builder(s, builder_id)
    data, size = await read_console(farm.store, builder_id, offset)
    return Response(data, media_type="text/plain; charset=utf-8",
                    headers={"X-Console-Size": str(size)})


async def read_console(store: ObjectStore, builder_id: int,
                       offset: int | None = None, tail: int = 0) -> tuple[bytes, int]:
    """A builder's console from byte ``offset`` (or its last ``tail`` bytes when
    ``offset`` is None), and the whole console's size. The listing gives the chunks'
    sizes: only the chunks (and parts) asked for are read."""
    chunks = [info async for info in store.list(console_prefix(builder_id))]
    size = sum(info.size for info in chunks)
    start = max(size - tail, 0) if offset is None else min(offset, size)
    data = bytearray()
    at = 0
    for info in chunks:
        if at + info.size > start:
            async for piece in store.get(info.key, max(start - at, 0)):
                data += piece
        at += info.size
    return bytes(data), size
