"""``nixfarm push``: upload whole closures, only what the cache lacks, in parallel.

    paths ─► closure (nix-store -qR) ─► ask the server what is missing (one request)
          ─► path info of the missing (one nix call) ─► N uploads at a time:
             nix-store --dump ─► compress (worker thread) ─► HTTP PUT, streamed

A path is uploaded only after the paths it references, so a reader never finds a
path in the cache whose references are not (yet) there.

A transfer that stalls (the server neither reads nor answers for ``stall`` seconds)
or breaks is tried again from the start (a PUT of a path is idempotent), as
``retries.uploads`` says; then the push fails, naming the path.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncGenerator, Callable, Sequence

import anyio.to_thread

from nixfarm.client.api import Client
from nixfarm.errors import InvalidInput, NixError, Unavailable
from nixfarm.nix import command
from nixfarm.nix.compression import compressor
from nixfarm.nix.storepath import STORE_DIR
from nixfarm.retries import retried, uploads
from nixfarm.wire.caches import PathInfo

log = logging.getLogger("nixfarm.push")

#: Seconds a transfer may make no progress before it is given up (and tried again).
STALL_SECONDS = 60.0

_CHUNK = 1 << 20

Progress = Callable[[int], None]


def store_path_of(arg: str) -> str:
    """A store path from an argument: a store path, or a symlink into the store."""
    real = os.path.realpath(arg)
    if not real.startswith(STORE_DIR + "/"):
        raise InvalidInput(f"{arg} is not a Nix store path", field="path")
    top = real[len(STORE_DIR) + 1:].split("/", 1)[0]
    return f"{STORE_DIR}/{top}"


async def _nar_chunks(path: str, compression: str, level: int | None,
                      progress: Progress) -> AsyncGenerator[bytes, None]:
    process = await asyncio.create_subprocess_exec(
        "nix-store", "--dump", path, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True)
    assert process.stdout is not None and process.stderr is not None
    packer = compressor(compression, level)
    try:
        while True:
            raw = await process.stdout.read(_CHUNK)
            if not raw:
                break
            # Read whole megabytes: compression pays off per call, not per pipe read.
            while len(raw) < _CHUNK:
                more = await process.stdout.read(_CHUNK - len(raw))
                if not more:
                    break
                raw += more
            packed = await anyio.to_thread.run_sync(packer.compress, raw)
            progress(len(raw))
            if packed:
                yield packed
        tail = packer.flush()
        if tail:
            yield tail
        errors = await process.stderr.read()
        if await process.wait() != 0:
            raise NixError(f"nix-store --dump {path} failed: {errors.decode().strip()}")
    finally:
        if process.returncode is None:
            process.kill()
            # communicate(), not wait(): asyncio reports the exit only once both pipes
            # reach EOF, and a stdout we stopped reading is paused and never would.
            await process.communicate()


async def push(client: Client, cache: str, args: Sequence[str], *, compression: str = "zstd",
               level: int | None = None, jobs: int = 4,
               on_plan: Callable[[int, int, int], None] | None = None,
               progress: Progress | None = None,
               on_path: Callable[[str, bool], None] | None = None,
               stall: float = STALL_SECONDS) -> list[str]:
    """Push the closures of ``args``; returns the store paths uploaded.

    ``on_plan(closure_size, missing_count, missing_nar_bytes)`` is called once the
    work is known; ``progress(nar_bytes)`` as NAR bytes are sent (negative when a
    failed attempt's bytes are taken back); ``on_path(path, done)`` when a path's
    upload starts and ends.
    """
    roots = [store_path_of(a) for a in args]
    closure = await command.query_closure(roots)
    missing = await retried(uploads("asking the cache what is missing", log),
                            client.missing, cache, closure)
    infos = {i.path: i for i in await command.path_info(missing)} if missing else {}
    if on_plan:
        on_plan(len(closure), len(missing), sum(i.nar_size for i in infos.values()))
    done: dict[str, asyncio.Event] = {p: asyncio.Event() for p in missing}
    slots = asyncio.Semaphore(jobs)
    tick = progress or (lambda n: None)

    async def upload(path: str) -> None:
        info = infos[path]
        for ref in info.references:
            if ref != path and ref in done:
                await done[ref].wait()
        async with slots:
            wire = PathInfo(store_path=path, nar_hash=info.nar_hash, nar_size=info.nar_size,
                            references=[r.rsplit("/", 1)[-1] for r in info.references],
                            deriver=info.deriver.rsplit("/", 1)[-1] if info.deriver else None,
                            ca=info.ca, compression=compression)
            if on_path:
                on_path(path, False)

            async def attempt() -> None:
                sent = 0

                def count(n: int) -> None:
                    nonlocal sent
                    sent += n
                    tick(n)

                # Closed here, not by the garbage collector: an upload cut off mid-body
                # leaves the generator suspended, and its nix-store must be reaped while
                # the event loop still runs.
                chunks = _nar_chunks(path, compression, level, count)
                try:
                    await client.upload_path(cache, wire, chunks, stall)
                except BaseException:
                    tick(-sent)  # the next attempt sends it all again
                    raise
                finally:
                    await chunks.aclose()

            try:
                await retried(uploads(f"uploading {path}", log), attempt)
            except Unavailable as e:
                raise Unavailable(f"uploading {path} failed: {e.message}", url=e.url) from None
            if on_path:
                on_path(path, True)
        done[path].set()

    try:
        async with asyncio.TaskGroup() as group:
            for path in missing:
                group.create_task(upload(path))
    except BaseExceptionGroup as group_error:
        # Report the first failure as itself; the other uploads were cancelled by it.
        first: BaseException = group_error
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
    return missing
