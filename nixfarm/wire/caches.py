"""Wire models of the JSON API, shared by the server and the CLI.

Each model says which route uses it. Field names are the JSON names.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CacheCreate(Wire):
    """POST /api/v1/caches (admin)."""

    name: str
    private: bool = False
    priority: int | None = None


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

    paths: list[str] = Field(max_length=100_000)


class MissingResponse(Wire):
    missing: list[str]


class PathInfo(Wire):
    """Header ``X-Nixfarm-Path-Info`` of PUT /api/v1/caches/NAME/paths/BASENAME.

    The body is the path's NAR, compressed as ``compression`` says.
    """

    store_path: str
    nar_hash: str
    nar_size: int
    references: list[str] = []
    deriver: str | None = None
    ca: str | None = None
    compression: str = "zstd"


class TokenCreate(Wire):
    """POST /api/v1/tokens (admin)."""

    name: str
    scopes: list[str]
    expires_at: datetime | None = None


class TokenOut(Wire):
    """GET /api/v1/tokens (admin); ``secret`` only in the answer to its creation."""

    id: int
    name: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    revoked: bool
    last_used_at: datetime | None
    secret: str | None = None


class WhoAmI(Wire):
    """GET /api/v1/whoami."""

    name: str | None
    scopes: list[str]


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
