"""The binary cache service: what the Nix cache protocol and ``nixfarm push`` call.

Visibility is decided by the database, never by the object store: a NAR file is
written under a temporary name, hashed on the way in, and published under its
content address only when its hash is right; a narinfo row is written only after
its NAR file is stored and its NarHash/NarSize checked. So a crash mid-upload or a
lying client leaves nothing a reader can see. Access control is the caller's job
(``server/``); this module trusts that the caller checked scopes.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
from collections.abc import AsyncIterable, Iterable, Sequence
from dataclasses import dataclass

from cachetools import TTLCache
from sqlalchemy.ext.asyncio import AsyncSession

from nixfarm.cache.ingest import NarFacts, NarIngest
from nixfarm.cache.publishing import CachePublisher
from nixfarm.config import Settings
from nixfarm.db import caches as cache_queries
from nixfarm.db import paths as path_queries
from nixfarm.db.engine import Database
from nixfarm.db.models import Cache, CachePath, Nar
from nixfarm.errors import Conflict, IntegrityError, InvalidInput, NotFound
from nixfarm.events.base import EventBus
from nixfarm.naming import check_cache_name
from nixfarm.nix import nix32
from nixfarm.nix.compression import EXTENSIONS, compression_of
from nixfarm.nix.hashes import normalise_hash, parse_hash
from nixfarm.nix.narinfo import NarInfo, check_content_address, fingerprint
from nixfarm.nix.signing import SecretKey
from nixfarm.nix.storepath import DRV_BASENAME, STORE_DIR, StorePath, is_hash_part
from nixfarm.scopes import allows, cache_scope
from nixfarm.storage.base import Download, ObjectStore

_NAR_FILE = re.compile(f"([{nix32.ALPHABET}]{{52}})\\.nar(\\.[a-z0-9]+)?")
# How long a cache's settings are remembered (see CacheService.get).
_VIEW_SECONDS = 10.0
#: How long a rendered narinfo is served from memory before it is read again.
_NARINFO_SECONDS = 60.0
#: How many narinfos, NAR locations and caches' settings are remembered (least
#: recently used out first).
_MEMO_ENTRIES = 4096
#: Event bus topic telling every server to forget remembered or published answers:
#: ``{"cache": NAME, "hashes": [...], "nar_files": [...]}`` (a re-upload, a collection).
FORGET_TOPIC = "cache.forget"


@dataclass(frozen=True)
class CacheView:
    """A cache as callers see it: never its secret key."""

    name: str
    private: bool
    public_key: str
    priority: int
    #: The database id reads query by (so a read needs no lookup by name).
    id: int

    @classmethod
    def of(cls, cache: Cache) -> CacheView:
        return cls(cache.name, cache.private, cache.public_key, cache.priority, cache.id)

    def readable_with(self, scopes: Iterable[str]) -> bool:
        """Whether a holder of ``scopes`` may read it: a private cache needs its pull."""
        return not self.private or allows(scopes, cache_scope(self.name, "pull"))


@dataclass(frozen=True)
class PathUpload:
    """What ``nixfarm push`` says about a store path it uploads (from the Nix database)."""

    store_path: str
    nar_hash: str
    nar_size: int
    references: Sequence[str]
    deriver: str | None
    ca: str | None


def nar_key(file_hash: str, compression: str) -> str:
    return f"nar/{nix32.encode(parse_hash(file_hash))}.nar{EXTENSIONS[compression]}"


def listing_key(file_hash: str) -> str:
    return f"ls/{nix32.encode(parse_hash(file_hash))}.ls"


def _basename(path: str) -> str:
    return StorePath.parse(path).basename


class CacheService:
    def __init__(self, db: Database, store: ObjectStore, settings: Settings,
                 publisher: CachePublisher | None = None) -> None:
        self.db = db
        self.store = store
        self.settings = settings
        #: Where public caches' answers are published (None without a front server).
        self.publisher = publisher
        #: Set by the farm: how other servers hear of re-uploads (see FORGET_TOPIC).
        self.events: EventBus | None = None
        # Rendered narinfos. A store path's narinfo only changes when it is re-uploaded:
        # through this process (invalidated on write) or through another server (hence
        # the time bound). Misses are never cached, so uploads show at once.
        self._narinfos: TTLCache[tuple[str, str], bytes] = TTLCache(
            maxsize=_MEMO_ENTRIES, ttl=_NARINFO_SECONDS)
        self._views: TTLCache[str, CacheView] = TTLCache(maxsize=_MEMO_ENTRIES,
                                                         ttl=_VIEW_SECONDS)
        self._nars: TTLCache[tuple[str, str], Download] = TTLCache(maxsize=_MEMO_ENTRIES,
                                                                   ttl=_VIEW_SECONDS)

    # -- caches ---------------------------------------------------------------------

    async def create(self, name: str, private: bool = False, priority: int | None = None
                     ) -> CacheView:
        check_cache_name(name)
        key = SecretKey.generate(f"{socket.gethostname()}-{name}-1")
        async with self.db.session() as s:
            cache = await cache_queries.create_cache(
                s, name, private, key.to_string(), key.public().to_string(),
                self.settings.cache.priority if priority is None else priority,
            )
        return CacheView.of(cache)

    async def get(self, name: str) -> CacheView:
        # Every cache-protocol request asks for its cache's settings (and its reads for
        # its id), and a database session costs about a millisecond on SQLite: five
        # times a whole narinfo answer from memory. The settings never change after
        # creation, so remember them briefly; the bound is for a cache deleted through
        # another server. Misses are not remembered: a new cache shows at once.
        with contextlib.suppress(KeyError):  # one lookup: `in` then `[]` could straddle expiry
            return self._views[name]
        async with self.db.session() as s:
            view = CacheView.of(await cache_queries.get_cache(s, name))
        self._views[name] = view
        return view

    async def all(self) -> list[CacheView]:
        async with self.db.session() as s:
            return [CacheView.of(c) for c in await cache_queries.list_caches(s)]

    async def stats(self, name: str) -> dict[str, int]:
        async with self.db.session() as s:
            cache = await cache_queries.get_cache(s, name)
            return {"paths": await path_queries.count_paths(s, cache.id)}

    def cache_info(self, cache: CacheView) -> str:
        text = f"StoreDir: {STORE_DIR}\nWantMassQuery: 1\nPriority: {cache.priority}\n"
        # A cache never changes its visibility, and its settings never change.
        if self.publisher is not None and not cache.private:
            self.publisher.cache_info(cache.name, text.encode())
        return text

    async def _publisher_for(self, cache: str) -> CachePublisher | None:
        """Where answers of ``cache`` are published: None for a private cache, or when
        there is no front server."""
        if self.publisher is None or (await self.get(cache)).private:
            return None
        return self.publisher

    # -- reading --------------------------------------------------------------------

    async def narinfo(self, cache: str, store_hash: str) -> bytes | None:
        """The rendered narinfo, or None when the cache has no such path; a public
        cache's is published as it is given."""
        body = await self._narinfo(cache, store_hash)
        if body is not None and (publisher := await self._publisher_for(cache)):
            publisher.narinfo(cache, store_hash, body)
        return body

    async def _narinfo(self, cache: str, store_hash: str) -> bytes | None:
        _check_store_hash(store_hash)
        with contextlib.suppress(KeyError):
            return self._narinfos[cache, store_hash]
        cache_id = (await self.get(cache)).id
        async with self.db.session() as s:
            path = await path_queries.get_path(s, cache_id, store_hash)
            if path is None:
                return None
            text = _render(path).encode()
        self._narinfos[cache, store_hash] = text
        return text

    async def listing(self, cache: str, store_hash: str) -> Download:
        """The ``.ls`` listing of a path's NAR (what ``nix store ls`` reads)."""
        _check_store_hash(store_hash)
        cache_id = (await self.get(cache)).id
        async with self.db.session() as s:
            path = await path_queries.get_path(s, cache_id, store_hash)
            file_hash = path.nar.file_hash if path is not None else None
        info = await self.store.stat(listing_key(file_hash)) if file_hash else None
        if info is None:
            raise NotFound(f"cache {cache!r} has no listing for {store_hash}", kind="listing",
                           name=store_hash)
        return await self._download(info.key, info.size)

    async def nar(self, cache: str, filename: str) -> Download:
        """Where the NAR file ``filename`` of the cache is; a public cache's local file
        is published as it is given."""
        found = await self._nar(cache, filename)
        if found.local_path is not None and (publisher := await self._publisher_for(cache)):
            publisher.nar_file(cache, filename, found.local_path)
        return found

    async def _nar(self, cache: str, filename: str) -> Download:
        # A NAR file is content-addressed and stays in a cache once uploaded, so where
        # it is stored can be remembered (briefly, for a cache deleted elsewhere): a
        # download then starts without a database session. Misses are not remembered.
        with contextlib.suppress(KeyError):
            return self._nars[cache, filename]
        file_hash, _ = _parse_nar_file(filename)
        cache_id = (await self.get(cache)).id
        async with self.db.session() as s:
            nar = await path_queries.cache_nar(s, cache_id, file_hash)
        if nar is None or nar_key(nar.file_hash, nar.compression) != f"nar/{filename}":
            raise NotFound(f"cache {cache!r} has no NAR file {filename!r}", kind="nar",
                           name=filename)
        download = await self._download(nar.storage_key, nar.file_size)
        if download.url is None:  # presigned URLs expire: never remembered
            self._nars[cache, filename] = download
        return download

    async def log(self, cache: str, drv: str) -> Download:
        _check_drv(drv)
        cache_id = (await self.get(cache)).id
        async with self.db.session() as s:
            log = await path_queries.get_log(s, cache_id, drv)
        if log is None:
            raise NotFound(f"cache {cache!r} has no build log for {drv!r}", kind="log", name=drv)
        return await self._download(log.storage_key, log.size)

    async def _download(self, key: str, size: int) -> Download:
        url = await self.store.presigned_url(key, self.settings.storage.presign_seconds)
        return Download(key, size, self.store.local_path(key), url)

    async def missing(self, cache: str, store_paths: Sequence[str]) -> list[str]:
        """Those of ``store_paths`` (full paths or basenames) the cache lacks."""
        by_hash = {StorePath.parse(p).hash_part: p for p in store_paths}
        cache_id = (await self.get(cache)).id
        async with self.db.session() as s:
            lacking = await path_queries.missing_hashes(s, cache_id, list(by_hash))
        return [by_hash[h] for h in lacking]

    # -- writing: the Nix HTTP binary cache protocol (`nix copy --to http://...`) -----

    async def receive_nar_file(self, cache: str, filename: str,
                               body: AsyncIterable[bytes]) -> None:
        """A ``PUT nar/<filehash>.nar.<ext>``: the file must hash to its name."""
        file_hash, compression = _parse_nar_file(filename)
        async with self.db.session() as s:
            row = await cache_queries.get_cache(s, cache)
        facts, stored = await self._ingest(body, compression, expected_file_hash=file_hash)
        async with self.db.session() as s:
            await _record_nar(s, row, facts, stored)

    async def receive_narinfo(self, cache: str, store_hash: str, text: str) -> None:
        """A ``PUT <hash>.narinfo``: its NAR must be stored here and match it."""
        info = NarInfo.parse(text)
        if info.store_path.hash_part != store_hash:
            raise InvalidInput(
                f"narinfo for {info.store_path.basename} uploaded as {store_hash}.narinfo",
                field="StorePath",
            )
        match = _NAR_FILE.fullmatch(info.url.removeprefix("nar/"))
        if not info.url.startswith("nar/") or match is None:
            raise InvalidInput(f"narinfo URL {info.url!r} is not nar/<filehash>.nar[.ext]",
                               field="URL")
        file_hash = _normal_hash(f"sha256:{match.group(1)}", "URL")
        if info.file_hash is not None and info.file_hash != file_hash:
            raise InvalidInput(
                f"narinfo FileHash {info.file_hash} is not the hash its URL {info.url} "
                "names", field="FileHash")
        if compression_of(info.url) != info.compression:
            raise InvalidInput(
                f"narinfo Compression {info.compression} does not fit its URL {info.url}",
                field="Compression")
        async with self.db.session() as s:
            row = await cache_queries.get_cache(s, cache)
            nar = await path_queries.cache_nar(s, row.id, file_hash)
            if nar is None:
                raise InvalidInput(
                    f"narinfo for {info.store_path.basename} names NAR {info.url}, which "
                    f"was not uploaded to cache {cache!r}", field="URL")
            if info.file_size is not None and info.file_size != nar.file_size:
                raise IntegrityError(
                    f"the narinfo claims FileSize {info.file_size}, but its NAR file has "
                    f"{nar.file_size} bytes", field="FileSize", expected=str(nar.file_size),
                    actual=str(info.file_size))
            _check_same(nar, info.nar_hash, info.nar_size)
            await _check_closure(s, row, info.store_path, info.references)
            await self._publish(s, row, nar, info.store_path, info.references,
                                info.deriver, info.ca)
        await self.forget_everywhere(cache, [info.store_path.hash_part], [])

    async def receive_log(self, cache: str, drv: str, body: AsyncIterable[bytes]) -> None:
        _check_drv(drv)
        async with self.db.session() as s:
            row = await cache_queries.get_cache(s, cache)
        key = f"log/{row.id}/{drv}"
        stored = await self.store.put(key, body)
        async with self.db.session() as s:
            await path_queries.put_log(s, row.id, drv, key, stored.size)

    # -- writing: `nixfarm push` ----------------------------------------------------

    async def receive_path(self, cache: str, upload: PathUpload, compression: str,
                           body: AsyncIterable[bytes]) -> None:
        """One store path's NAR file plus what Nix's database says of it."""
        store_path = StorePath.parse(upload.store_path)
        references = [_basename(r) for r in upload.references]
        deriver = _basename(upload.deriver) if upload.deriver else None
        nar_hash = _normal_hash(upload.nar_hash, "nar_hash")
        if upload.ca is not None:
            # It is served as the narinfo's CA line, as a narinfo PUT's would be.
            try:
                check_content_address(upload.ca)
            except InvalidInput as e:
                raise InvalidInput(f"ca: {e.message}", field="ca") from None
        if compression not in EXTENSIONS:
            raise InvalidInput(f"unsupported compression {compression!r}", field="compression")
        async with self.db.session() as s:
            row = await cache_queries.get_cache(s, cache)
            # Before the NAR is stored: a refused path leaves nothing behind.
            await _check_closure(s, row, store_path, references)
        facts, stored = await self._ingest(body, compression, expected_nar=(nar_hash,
                                                                            upload.nar_size))
        async with self.db.session() as s:
            nar = await _record_nar(s, row, facts, stored)
            await self._publish(s, row, nar, store_path, references, deriver, upload.ca)
        await self.forget_everywhere(cache, [store_path.hash_part], [])

    # -- garbage collection (nixfarm/cache/gc.py) -------------------------------------

    def forget(self, cache: str, store_hashes: Sequence[str], nar_files: Sequence[str]) -> None:
        """Drop what this process remembers or published of removed paths and NAR files
        (``<filehash>.nar[.ext]`` names)."""
        for store_hash in store_hashes:
            self._narinfos.pop((cache, store_hash), None)
        files = set(nar_files)
        for key in [k for k in self._nars if k[1] in files]:
            self._nars.pop(key, None)
        if self.publisher is not None:
            self.publisher.withdraw(cache, store_hashes, nar_files)

    async def forget_everywhere(self, cache: str, store_hashes: Sequence[str],
                                nar_files: Sequence[str]) -> None:
        """:meth:`forget` here, and tell every other server to (FORGET_TOPIC): after a
        re-upload or a collection is committed."""
        if not store_hashes and not nar_files:
            return
        self.forget(cache, store_hashes, nar_files)
        if self.events is not None:
            message = {"cache": cache, "hashes": list(store_hashes),
                       "nar_files": list(nar_files)}
            await self.events.publish(FORGET_TOPIC, json.dumps(message).encode())

    # -- shared -----------------------------------------------------------------------

    async def _ingest(self, body: AsyncIterable[bytes], compression: str, *,
                      expected_file_hash: str | None = None,
                      expected_nar: tuple[str, int] | None = None) -> tuple[NarFacts, str]:
        """Store a NAR file under its content address if it checks out; (facts, key)."""
        async with self.store.writer() as writer:
            ingest = NarIngest(writer, compression)
            async for chunk in body:
                await ingest.feed(chunk)
            facts = await ingest.finish()
            if expected_file_hash is not None and facts.file_hash != expected_file_hash:
                raise IntegrityError(
                    f"the uploaded NAR file hashes to {facts.file_hash}, not to the "
                    f"{expected_file_hash} its name claims", field="body",
                    expected=expected_file_hash, actual=facts.file_hash)
            if expected_nar is not None and (facts.nar_hash, facts.nar_size) != expected_nar:
                raise IntegrityError(
                    f"the uploaded NAR has hash {facts.nar_hash} and size {facts.nar_size}, "
                    f"not {expected_nar[0]} and {expected_nar[1]} as claimed", field="body",
                    expected=f"{expected_nar[0]} {expected_nar[1]}",
                    actual=f"{facts.nar_hash} {facts.nar_size}")
            key = nar_key(facts.file_hash, compression)
            async with self.db.session() as s:
                existing = await path_queries.get_nar_by_file_hash(s, facts.file_hash)
            if existing is not None:
                await writer.abort()  # already stored once: content-addressed
                return facts, existing.storage_key
            await writer.commit(key)
        await self.store.put(listing_key(facts.file_hash), facts.listing.encode())
        return facts, key

    async def _publish(self, s: AsyncSession, cache: Cache, nar: Nar, store_path: StorePath,
                       references: Sequence[str], deriver: str | None, ca: str | None) -> None:
        """Sign and record a path; ``references`` and ``deriver`` are checked basenames."""
        key = SecretKey.parse(cache.secret_key)
        signed = fingerprint(store_path.path, nar.nar_hash, nar.nar_size,
                             [f"{STORE_DIR}/{r}" for r in references])
        await path_queries.put_path(
            s, cache.id, store_path=store_path.path, nar=nar, references=list(references),
            deriver=deriver, ca=ca, sigs=[key.sign(signed)],
        )
        # What was remembered or published of the path is forgotten once this is
        # committed (the callers' forget_everywhere): a read between now and the commit
        # would otherwise remember the old narinfo again.


async def _record_nar(s: AsyncSession, cache: Cache, facts: NarFacts, storage_key: str) -> Nar:
    """Record a stored, verified NAR file and make it part of ``cache``."""
    nar = await path_queries.add_nar(
        s, file_hash=facts.file_hash, file_size=facts.file_size,
        compression=facts.compression, nar_hash=facts.nar_hash, nar_size=facts.nar_size,
        storage_key=storage_key,
    )
    await path_queries.link_nar_to_cache(s, cache.id, nar.id)
    return nar


async def _check_closure(s: AsyncSession, cache: Cache, store_path: StorePath,
                         references: Sequence[str]) -> None:
    """``Conflict`` naming the references (basenames) the cache lacks, but the path itself.

    A narinfo is the promise that its whole closure can be substituted from here; Nix
    uploads references first (``nix copy``, ``nixfarm push``), so a missing one means an
    upload out of order or a cache that lost a path, and serving it would fail later.
    """
    others = {StorePath.parse(f"{STORE_DIR}/{r}").hash_part: r for r in references
              if r != store_path.basename}
    lacking = await path_queries.missing_hashes(s, cache.id, list(others))
    if lacking:
        names = ", ".join(others[h] for h in lacking[:5])
        more = f" and {len(lacking) - 5} more" if len(lacking) > 5 else ""
        raise Conflict(
            f"{store_path.basename} references {names}{more}, which cache {cache.name!r} "
            "does not have; upload references first")


def _render(path: CachePath) -> str:
    nar = path.nar
    return NarInfo(
        store_path=StorePath.parse(path.store_path),
        url=nar_key(nar.file_hash, nar.compression),
        compression=nar.compression,
        file_hash=nar.file_hash,
        file_size=nar.file_size,
        nar_hash=path.nar_hash,
        nar_size=path.nar_size,
        references=path.reference_names,
        deriver=path.deriver,
        sigs=path.sig_list,
        ca=path.ca,
    ).render()


def _parse_nar_file(filename: str) -> tuple[str, str]:
    match = _NAR_FILE.fullmatch(filename)
    if match is None:
        raise InvalidInput(f"{filename!r} is not a NAR file name (<nix32 hash>.nar[.ext])",
                           field="url")
    return f"sha256:{match.group(1)}", compression_of(filename)


def _normal_hash(text: str, field: str) -> str:
    try:
        return normalise_hash(text)
    except InvalidInput as e:
        raise InvalidInput(f"{field}: {e.message}", field=field) from None


def _check_same(nar: Nar, nar_hash: str, nar_size: int) -> None:
    claimed = (_normal_hash(nar_hash, "NarHash"), nar_size)
    if (nar.nar_hash, nar.nar_size) != claimed:
        raise IntegrityError(
            f"the narinfo claims NarHash {claimed[0]} and NarSize {claimed[1]}, but its NAR "
            f"has {nar.nar_hash} and {nar.nar_size}", field="NarHash",
            expected=f"{nar.nar_hash} {nar.nar_size}", actual=f"{claimed[0]} {claimed[1]}")


def _check_store_hash(store_hash: str) -> None:
    if not is_hash_part(store_hash):
        raise InvalidInput(f"{store_hash!r} is not a store path hash", field="hash")


def _check_drv(drv: str) -> None:
    if not DRV_BASENAME.fullmatch(drv):
        raise InvalidInput(f"{drv!r} is not a derivation's basename (<hash>-<name>.drv)",
                           field="drv")
