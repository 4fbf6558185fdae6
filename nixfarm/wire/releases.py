"""``POST /api/v1/releases``: a release build of a git revision (docs/builders.md)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from nixfarm.naming import CACHE_NAME_PATTERN
from nixfarm.wire.base import Wire

#: A revision: a commit, branch or tag name (no option-like leading dash).
REV = r"^[A-Za-z0-9._/^~@{}-]{1,200}$"
#: The expression's file, relative to the repository's root. (Every value here goes
#: into the job's manifest and task script: the patterns keep them plain words.)
FILE = r"^[A-Za-z0-9_][A-Za-z0-9._/-]{0,199}$"
#: An attribute path (``-A``).
ATTR = r"^[A-Za-z0-9._-]{0,200}$"
#: A function argument of the expression (``--argstr NAME VALUE``): its name, and a
#: value of printable characters (it goes into the task's script, shell-quoted).
ARG_NAME = r"^[A-Za-z_][A-Za-z0-9_'-]{0,99}$"
ARG_VALUE = r"^[^\x00-\x1f\x7f]{0,1000}$"
#: A package of the farm's Nix package set, in the job's image.
PACKAGE = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$"


class ReleaseRequest(Wire):
    """Build ``file`` (``-A attr``) of ``repo`` at ``rev`` on a fresh builder and push its
    closure and build logs to ``cache``, signed by the server."""

    repo: str = Field(min_length=1, max_length=2048,
                      description="A git URL the server can fetch, or a path on the server.")
    rev: str = Field(pattern=REV)
    file: str = Field(default="release.nix", pattern=FILE)
    attr: str = Field(default="", pattern=ATTR)
    cache: str = Field(pattern=f"^{CACHE_NAME_PATTERN}$")
    #: String arguments of the expression's function (nix-build --argstr), as Hydra's
    #: jobset inputs: a version, a path the build's image holds, ...
    args: dict[Annotated[str, Field(pattern=ARG_NAME)],
               Annotated[str, Field(pattern=ARG_VALUE)]] = Field(default={}, max_length=20)
    #: Packages of the farm's Nix package set the build's image holds (its shell tools).
    packages: list[Annotated[str, Field(pattern=PACKAGE)]] = Field(
        default=["coreutils"], max_length=50)
    tags: list[str] = Field(default=[], max_length=19)
    #: The builder pool to build on; none: the first configured pool that takes the job
    #: (with no pool taking it, any runner that matches it).
    pool: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9-]{0,39}$")  # a pool name
