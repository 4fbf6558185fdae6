"""Image configs and image manifests, in the Docker schema 2 and OCI flavours.

An image is one config blob (platform, ``rootfs.diff_ids``, runtime config) and a
manifest that names the config and the compressed layers by digest. The two flavours
differ only in media types: the config bytes are shared, so both manifests of one image
point at the same config blob and the same layer blobs.

Every document is serialised canonically (sorted keys, no whitespace, ASCII), so the
same image always has the same manifest digest: that is what makes ``a/b`` and ``b/a``
one image and pull-by-digest stable across restarts.

Which flavour a client gets is decided by :func:`negotiate` from its ``Accept``
headers. What real clients send (all as separate headers, without q-values):

- docker: Docker schema 2, manifest list, OCI index, OCI manifest, schema 1;
- skopeo/podman (containers/image): OCI manifest, Docker schema 2, schema 1, lists;
- containerd/crane: Docker schema 2 and OCI, plus both list types.

Docker schema 2 is the most widely understood, so it is served whenever the client
takes it at least as willingly as OCI; OCI is served to clients that accept only OCI
(or prefer it by q-value), and to everyone when the layers are zstd, which schema 2
cannot describe.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from nixfarm.errors import InvalidInput
from nixfarm.oci.digest import Digest

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MANIFEST_MEDIA_TYPES = (DOCKER_MANIFEST, OCI_MANIFEST)

# The Nix store's mtime; the image has no meaningful creation time, and a fixed one
# keeps the config (and so the manifest digest) reproducible.
EPOCH_CREATED = "1970-01-01T00:00:01Z"

Compression = Literal["gzip", "zstd"]


@dataclass(frozen=True)
class LayerInfo:
    """A written layer: compressed ``digest``/``size`` and uncompressed ``diff_id``."""

    digest: Digest
    size: int
    diff_id: Digest
    compression: Compression


@dataclass(frozen=True)
class Platform:
    """An OCI platform; :meth:`for_nix_system` maps Nix system names onto it."""

    architecture: str = "amd64"
    os: str = "linux"
    variant: str = ""

    @classmethod
    def for_nix_system(cls, system: str) -> Platform:
        """``x86_64-linux`` -> amd64/linux, ``aarch64-linux`` -> arm64/linux/v8."""
        known = {
            "x86_64-linux": cls("amd64", "linux"),
            "aarch64-linux": cls("arm64", "linux", "v8"),
            "i686-linux": cls("386", "linux"),
            "armv7l-linux": cls("arm", "linux", "v7"),
            "riscv64-linux": cls("riscv64", "linux"),
        }
        platform = known.get(system)
        if platform is None:
            raise InvalidInput(f"Nix system {system!r} has no OCI platform.", "system")
        return platform


@dataclass(frozen=True)
class RuntimeConfig:
    """The ``config`` object of an image config: how a container of it starts."""

    env: Sequence[str] = ()
    cmd: Sequence[str] = ()
    entrypoint: Sequence[str] = ()
    working_dir: str = ""
    user: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        # Empty fields are left out rather than written as null, as docker does.
        out: dict[str, Any] = {}
        if self.env:
            out["Env"] = list(self.env)
        if self.cmd:
            out["Cmd"] = list(self.cmd)
        if self.entrypoint:
            out["Entrypoint"] = list(self.entrypoint)
        if self.working_dir:
            out["WorkingDir"] = self.working_dir
        if self.user:
            out["User"] = self.user
        if self.labels:
            out["Labels"] = dict(self.labels)
        return out


def canonical_json(document: Any) -> bytes:
    """Serialise ``document`` deterministically: sorted keys, compact, ASCII."""
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def image_config(
    layers: Sequence[LayerInfo],
    runtime: RuntimeConfig,
    platform: Platform = Platform(),
) -> bytes:
    """The image config blob for ``layers`` (bottom first) and ``runtime``."""
    document: dict[str, Any] = {
        "architecture": platform.architecture,
        "os": platform.os,
        "created": EPOCH_CREATED,
        "rootfs": {"type": "layers", "diff_ids": [str(layer.diff_id) for layer in layers]},
        "config": runtime.to_json(),
    }
    if platform.variant:
        document["variant"] = platform.variant
    return canonical_json(document)


def layer_media_type(compression: Compression, manifest_media_type: str) -> str:
    """The media type of a layer with ``compression`` in a manifest of that type."""
    if manifest_media_type == OCI_MANIFEST:
        return OCI_LAYER_ZSTD if compression == "zstd" else OCI_LAYER_GZIP
    if manifest_media_type == DOCKER_MANIFEST:
        if compression == "zstd":
            raise InvalidInput(
                "Docker schema 2 manifests cannot describe zstd layers; use OCI.", "media_type"
            )
        return DOCKER_LAYER_GZIP
    raise InvalidInput(f"{manifest_media_type!r} is not an image manifest type.", "media_type")


def image_manifest(config: bytes, layers: Sequence[LayerInfo], media_type: str) -> bytes:
    """The manifest of type ``media_type`` for the config blob ``config`` and ``layers``."""
    config_type = OCI_CONFIG if media_type == OCI_MANIFEST else DOCKER_CONFIG
    document = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {
            "mediaType": config_type,
            "size": len(config),
            "digest": str(Digest.of(config)),
        },
        "layers": [
            {
                "mediaType": layer_media_type(layer.compression, media_type),
                "size": layer.size,
                "digest": str(layer.digest),
            }
            for layer in layers
        ],
    }
    return canonical_json(document)


def manifest_media_type(manifest: bytes) -> str:
    """The media type a stored manifest declares (both flavours carry ``mediaType``)."""
    try:
        document = json.loads(manifest)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput("The manifest is not JSON.", "manifest") from exc
    media_type = document.get("mediaType") if isinstance(document, dict) else None
    if media_type not in MANIFEST_MEDIA_TYPES:
        raise InvalidInput(
            f"The manifest's media type {media_type!r} is not one nixfarm serves.", "manifest"
        )
    return str(media_type)


def _quality(ranges: list[tuple[str, float]], media_type: str) -> tuple[float, int]:
    """The q-value ``ranges`` give ``media_type`` and how specifically they name it.

    The most specific matching range decides the q-value (RFC 9110 12.5.1); the
    specificity (2 exact, 1 ``type/*``, 0 ``*/*``, -1 no match) breaks ties.
    """
    kind = media_type.split("/", 1)[0] + "/*"
    best: tuple[int, float] = (-1, 0.0)
    for media_range, q in ranges:
        if media_range == media_type:
            specificity = 2
        elif media_range == kind:
            specificity = 1
        elif media_range == "*/*":
            specificity = 0
        else:
            continue
        # Among ranges of equal specificity the most generous one wins.
        best = max(best, (specificity, q))
    return best[1], best[0]


def _parse_accept(accept: str) -> list[tuple[str, float]]:
    ranges = []
    for item in accept.split(","):
        media_range, *params = (part.strip() for part in item.split(";"))
        if not media_range:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    q = 0.0
        ranges.append((media_range.lower(), q))
    return ranges


def negotiate(accept_header: str, *, oci_only: bool = False) -> str:
    """Pick the manifest media type to answer a client with.

    ``accept_header`` is all of the request's ``Accept`` headers joined with ``,``.
    ``oci_only`` says the image can only be described in OCI (zstd layers). A client
    that names neither flavour gets Docker schema 2, the type every client understands.
    """
    if oci_only:
        return OCI_MANIFEST
    ranges = _parse_accept(accept_header)
    docker = _quality(ranges, DOCKER_MANIFEST)
    oci = _quality(ranges, OCI_MANIFEST)
    # Tuples compare q first, then how explicitly the client named the type: a client
    # that names OCI and accepts anything else via */* gets OCI.
    if docker[0] > 0 and docker >= oci:
        return DOCKER_MANIFEST
    if oci[0] > 0:
        return OCI_MANIFEST
    return DOCKER_MANIFEST
