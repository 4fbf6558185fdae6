"""The registry service: from a repository name and a tag to manifests and blobs.

    name, tag ──> names.parse ──> source.resolve(tag) ──> cache key (None if it moves)
        ──> manifest cache (memory, storage) ──hit──> Image
        ──miss──> single flight per image ──> Nix (builder) ──> compose (layer cache)
                  ──> manifest cache ──> Image

An Image renders to either manifest flavour, chosen per request by content
negotiation. Blobs (layers and configs) are only ever read here, by digest.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import NoReturn

from nixfarm.config import Settings
from nixfarm.errors import ConfigError, NixError, NixfarmError, NixTimeout, NotFound
from nixfarm.oci.digest import Digest
from nixfarm.oci.manifest import (
    DOCKER_MANIFEST,
    Platform,
    canonical_json,
    manifest_media_type,
    negotiate,
)
from nixfarm.registry import names, sources
from nixfarm.registry.buildboard import Build, BuildBoard
from nixfarm.registry.compose import Image, compose
from nixfarm.registry.flight import SingleFlight
from nixfarm.registry.layers import LayerCache, blob_key
from nixfarm.registry.manifests import ManifestCache
from nixfarm.registry.nixbuild import NixBuilder
from nixfarm.registry.popularity import Popularity, PopularitySource
from nixfarm.registry.publishing import Publication, RegistryPublisher
from nixfarm.registry.sources import PackageSource, Resolved
from nixfarm.storage.base import Download, ObjectStore

log = logging.getLogger("nixfarm.registry")

#: Bumped whenever composition changes what an image looks like, so old cache entries
#: are not served for new code.
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ManifestAnswer:
    body: bytes
    media_type: str
    digest: Digest


@dataclass(frozen=True)
class BlobAnswer:
    """A blob's digest and where it is stored."""

    digest: Digest
    file: Download


class RegistryService:
    def __init__(self, settings: Settings, store: ObjectStore,
                 publisher: RegistryPublisher | None = None) -> None:
        registry = settings.registry
        sources.check(registry.source)  # a broken source stops the server at start-up
        self.settings = settings
        self.store = store
        self.source = PackageSource(registry.source) if registry.source.kind != "none" else None
        self.builder = NixBuilder(settings.nix_options, registry.nix_timeout,
                               settings.data_dir / "registry-gcroots")
        self.popularity = PopularitySource(self.builder, registry.popularity_file)
        self.layers = LayerCache(store, registry.compression)
        self.manifests = ManifestCache(store)
        self.builds = BuildBoard()
        self._flight: SingleFlight[Image] = SingleFlight()
        # Answers are published only when pulls need no token.
        self.published = Publication(publisher) if publisher is not None \
            and not registry.require_auth else None

    def _source(self) -> PackageSource:
        if self.source is None:
            raise ConfigError("This registry has no package source configured: set "
                              "registry.source in the configuration (or start the farm with "
                              "`nixfarm up --demo`).", key="registry.source")
        return self.source

    def cache_key(self, resolved: Resolved, request: names.ImageRequest,
                  popularity: Popularity) -> str | None:
        """Where the image is cached; None when the source is a moving target."""
        if resolved.cache_key is None:
            return None
        registry = self.settings.registry
        document = {"format": FORMAT_VERSION, "source": resolved.cache_key,
                    "packages": list(request.packages), "system": request.system,
                    "compression": registry.compression, "budget": registry.layer_budget,
                    "popularity": popularity.version}
        return hashlib.sha256(canonical_json(document)).hexdigest()

    def tags(self, name: str) -> list[str]:
        names.parse(name)
        self._source()
        return ["latest"]

    async def image(self, name: str, tag: str) -> Image:
        """The image ``name:tag`` names, from a cache or built now."""
        return (await self._image(name, tag))[0]

    async def _image(self, name: str, tag: str) -> tuple[Image, Resolved]:
        request = names.parse(name)
        names.check_tag(tag)
        resolved = await self._source().resolve(tag)
        popularity = await self.popularity.get(resolved, request.system)
        key = self.cache_key(resolved, request, popularity)
        if key is not None:
            cached = await self.manifests.get(key)
            if cached is not None:
                return cached, resolved
        flight = key or hashlib.sha256(canonical_json(
            [resolved.identity, list(request.packages), request.system])).hexdigest()
        return await self._flight.run(
            flight, lambda: self._build(request, resolved, popularity, key, f"{name}:{tag}")
        ), resolved

    async def _build(self, request: names.ImageRequest, resolved: Resolved,
                     popularity: Popularity, key: str | None, reference: str = "") -> Image:
        """Build the image; ``reference`` (``name:tag``, as pulled) is recorded with it."""
        if key is not None:
            # A flight for this key may have finished between our lookup and now.
            cached = await self.manifests.get(key)
            if cached is not None:
                return cached
        build = self.builds.start(request.label)
        log.info("build %s: building image %s from %s", build.id, request.label,
                 resolved.identity)

        def on_line(line: str) -> None:
            build.append(line)
            log.info("build %s: %s", build.id, line)

        try:
            # The closure is rooted against garbage collection until its layers are written.
            async with self.builder.built(request, resolved, on_line) as closure:
                image = await compose(closure, self.layers, popularity.counts,
                                      self.settings.registry.layer_budget,
                                      Platform.for_nix_system(request.system))
            await self.manifests.put(key, image, reference, build.id)
        except NixfarmError as exc:
            self._failed(build, exc)
        except BaseException:
            build.finish("failed", "internal error")
            raise
        build.finish("succeeded", f"{len(image.layers)} layers")
        log.info("build %s: image %s has %d layers", build.id, request.label, len(image.layers))
        return image

    def _failed(self, build: Build, exc: NixfarmError) -> NoReturn:
        """Finish ``build`` and re-raise ``exc`` pointing at the build's log."""
        build.finish("timed out" if isinstance(exc, NixTimeout) else "failed", exc.message)
        log.warning("build %s failed: %s", build.id, exc.message)
        where = f" The build log is at /registry/builds/{build.id}."
        if isinstance(exc, NixTimeout):
            raise NixTimeout(exc.message + where, drv=exc.drv, log_tail=exc.log_tail,
                             seconds=exc.seconds) from None
        if isinstance(exc, NixError):
            raise NixError(exc.message + where, drv=exc.drv, log_tail=exc.log_tail) from None
        raise exc

    async def manifest(self, name: str, reference: str, accept: str,
                       uri: str | None = None) -> ManifestAnswer:
        """The manifest of ``name`` at a tag or digest, in the flavour ``accept`` prefers;
        ``uri`` is the request's path, under which the edge may publish a stable tag."""
        if ":" in reference:  # a digest: tags have no colon
            names.check_name(name)
            digest = Digest.parse(reference)
            body = await self.manifests.by_digest(digest)
            media_type = manifest_media_type(body)
            if self.published is not None:
                self.published.manifest(body, media_type, digest)
            return ManifestAnswer(body, media_type, digest)
        image, resolved = await self._image(name, reference)
        oci_only = image.compression == "zstd"
        media_type = negotiate(accept, oci_only=oci_only)
        body, digest = image.manifest(media_type), image.digest(media_type)
        if self.published is not None:
            self.published.manifest(body, media_type, digest)
            if uri is not None and resolved.cache_key is not None and not oci_only:
                path_key = resolved.cache_key if self._source().kind == "path" else None
                self.published.tag(uri, image.manifest(DOCKER_MANIFEST),
                                   image.digest(DOCKER_MANIFEST), path_key)
        return ManifestAnswer(body, media_type, digest)

    async def blob(self, name: str, digest_text: str) -> BlobAnswer:
        """Where the blob ``digest_text`` is; NotFound(kind="blob") if the store lacks it."""
        names.check_name(name)
        digest = Digest.parse(digest_text)
        key = blob_key(digest)
        local = self.store.local_path(key)
        if local is not None:
            try:
                return BlobAnswer(digest, Download(key, local.stat().st_size, local, None))
            except FileNotFoundError:
                pass
        info = await self.store.stat(key)
        if info is None:
            raise NotFound(f"No blob has digest {digest}.", kind="blob", name=str(digest))
        url = await self.store.presigned_url(key, self.settings.storage.presign_seconds)
        return BlobAnswer(digest, Download(key, info.size, None, url))

    async def watch_source(self) -> None:
        """While tags are published, withdraw them when a path source's content changes
        (runs until cancelled; returns at once when there is nothing to watch)."""
        if self.published is not None and self.source is not None:
            await self.published.watch(self.source)
