"""Wire models of the caches API (``/api/v1/caches``) and of ``nixfarm push``.

Shared by the server, the CLI and the runner's cache push. Each model says which route
uses it. Field names are the JSON names.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from nixfarm.wire.base import Int32, Wire
from nixfarm.wire.values import Compression, NarHash, StorePathText


class CacheCreate(Wire):
    """POST /api/v1/caches (admin)."""

    name: str
    private: bool = False
    priority: Int32 | None = None


class CacheOut(Wire):
    """GET /api/v1/caches[/NAME]."""

    name: str
    private: bool
    public_key: str
    priority: int
    url: str
    paths: int | None = None


class MissingRequest(Wire):
    """POST /api/v1/caches/NAME/missing (cache push): which of these does the cache lack?"""

    paths: list[StorePathText] = Field(max_length=100_000)


class MissingResponse(Wire):
    missing: list[StorePathText]


class PathInfo(Wire):
    """Header ``X-Nixfarm-Path-Info`` of PUT /api/v1/caches/NAME/paths/BASENAME.

    The body is the path's NAR, compressed as ``compression`` says.
    """

    store_path: StorePathText
    nar_hash: NarHash
    nar_size: int = Field(ge=0, le=2**63 - 1)
    references: list[StorePathText] = []
    deriver: StorePathText | None = None
    ca: str | None = None
    compression: Compression = "zstd"


class GcRequest(Wire):
    """POST /api/v1/caches/NAME/gc (admin): remove what was uploaded before a cutoff."""

    older_than_days: float = Field(gt=0, le=36500, allow_inf_nan=False)
    dry_run: bool = False


class GcReport(Wire):
    """The answer to POST /api/v1/caches/NAME/gc: what was (or, dry, would be) removed."""

    cache: str
    dry_run: bool
    #: Paths uploaded before this were candidates.
    cutoff: datetime
    paths_removed: int
    #: Candidates kept because a path that stays needs them (its closure).
    paths_kept: int
    nar_files_removed: int
    logs_removed: int
    #: Sizes of the removed NAR files and build logs.
    bytes_freed: int
