"""The ``sources`` entries of a manifest: which repository to clone, where, at what ref.

builds.sr.ht packs all of it into one string, and its worker reads it in this order:

    [directory::][scm+]url[#ref]

1. ``#ref`` — everything after the ``#`` is a branch, tag or commit to check out.
2. ``directory::`` — clone into that directory of the build user's home instead of the
   URL's last path component (with ``.git`` dropped for git, as ``git clone`` does). It
   may be nested (``vendor/lib::...``) but must stay inside the home: no absolute path,
   no ``..``.
3. ``scm+`` — ``git+https://...`` or ``hg+ssh://...`` pick the version control system;
   without a prefix it is git.

The worker accepts any string and lets ``git clone`` fail later. We refuse what cannot
work, at submit time: an empty part, a second ``#`` or ``::``, an unknown system or URL
scheme, whitespace, and anything that starts with ``-`` (which a clone command would
read as an option). Two sources that would clone into the same directory are refused by
the manifest, which sees them all.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

Scm = Literal["git", "hg"]

_SCHEMES: dict[str, frozenset[str]] = {
    "git": frozenset({"https", "http", "ssh", "git", "file"}),
    "hg": frozenset({"https", "http", "ssh"}),
}
# git's "scp-like" syntax: [user@]host:path, e.g. git@git.sr.ht:~sircmpwn/hare
_SCP_LIKE = re.compile(r"^(?:[A-Za-z0-9._~+-]+@)?[A-Za-z0-9.-]+:[^:].*$")
_WHITESPACE = re.compile(r"\s")
_MAX_LENGTH = 2048


@dataclass(frozen=True)
class ParsedSource:
    scm: Scm
    url: str
    ref: str | None
    directory: str


def parse_source(spec: str) -> ParsedSource:
    """Split a sources entry into its parts; ``ValueError`` says what is wrong."""
    if not spec:
        raise ValueError("expected a repository URL, got an empty string")
    if len(spec) > _MAX_LENGTH:
        raise ValueError(f"a source is at most {_MAX_LENGTH} characters")
    if _WHITESPACE.search(spec):
        raise ValueError(f"source {spec!r} contains whitespace")

    rest, ref = spec, None
    if "#" in rest:
        rest, ref = rest.split("#", 1)
        if "#" in ref:
            raise ValueError(f"source {spec!r} has more than one '#'; expected url#ref")
        if not ref:
            raise ValueError(f"source {spec!r} has an empty ref after '#'")
        if ref.startswith("-"):
            raise ValueError(f"ref {ref!r} must not start with '-'")

    directory = None
    if "::" in rest:
        directory, rest = rest.split("::", 1)
        if "::" in rest:
            raise ValueError(f"source {spec!r} has more than one '::'; expected directory::url")
        directory = directory or None  # "::url" means the default, as in builds.sr.ht

    scm: Scm = "git"
    url = rest
    scheme, sep, after = rest.partition("://")
    if sep and "+" in scheme:
        prefix, _, transport = scheme.partition("+")
        if prefix not in _SCHEMES:
            raise ValueError(
                f"unsupported version control {prefix!r} in {spec!r}; expected git+ or hg+"
            )
        scm = "git" if prefix == "git" else "hg"
        url = f"{transport}://{after}"
    _check_url(url, scm, spec)

    if directory is None:
        directory = posixpath.basename(_url_path(url).rstrip("/"))
        if scm == "git":
            directory = directory.removesuffix(".git")
        if not directory or directory in (".", ".."):
            raise ValueError(
                f"cannot tell a directory name from {spec!r}; write it as directory::url"
            )
    _check_directory(directory, spec)
    return ParsedSource(scm=scm, url=url, ref=ref, directory=directory)


def _check_url(url: str, scm: Scm, spec: str) -> None:
    if url.startswith("-"):
        raise ValueError(f"URL {url!r} must not start with '-'")
    allowed = _SCHEMES[scm]
    scheme, sep, _ = url.partition("://")
    if sep:
        if scheme.lower() not in allowed:
            raise ValueError(
                f"unsupported URL scheme {scheme!r} in {spec!r}; expected "
                f"{', '.join(sorted(allowed))}"
            )
        parts = urlsplit(url)
        if scheme.lower() != "file" and not parts.hostname:
            raise ValueError(f"URL {url!r} has no host")
        if not parts.path.strip("/"):
            raise ValueError(f"URL {url!r} names no repository")
        return
    if scm == "git" and _SCP_LIKE.match(url):
        return
    raise ValueError(
        f"expected a repository URL such as https://git.sr.ht/~user/repo or "
        f"git@host:path, got {spec!r}"
    )


def _url_path(url: str) -> str:
    if "://" in url:
        return urlsplit(url).path
    return url.split(":", 1)[1]  # scp-like


def _check_directory(directory: str, spec: str) -> None:
    # A nested directory (vendor/lib::url) is fine, as in builds.sr.ht; it must stay in
    # the build user's home, so no absolute path and no '..', and name it one way only.
    parts = directory.split("/")
    if directory.startswith("/") or "\\" in directory or any(
            part in ("", ".", "..") for part in parts):
        raise ValueError(
            f"directory {directory!r} in {spec!r} must be a relative path inside the build "
            "directory (no leading '/', no '.' or '..', no empty parts)")
    if any(part.startswith("-") for part in parts):
        raise ValueError(f"directory {directory!r} must not start with '-'")
