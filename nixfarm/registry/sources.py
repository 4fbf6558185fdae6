"""Where the packages come from: a local path, a git repository, or a channel tarball.

A source turns the tag of a pull into what image.nix needs to import the package set
(a :class:`Resolved`), and says whether the result may be cached. Only targets that
cannot move get a cache key:

- ``path``: a directory. Its key is a hash of its *content* (file names, types, modes
  and bytes), so editing a file changes the key. Hashing reads every file once; after
  that a file is re-read only when its (inode, size, mtime) changes, so a warm check of
  a nixpkgs checkout is a walk of stat calls.
- ``git``: a repository URL. The tag is the ref; a tag of 40 hex digits is a commit,
  which is the only cacheable case (``latest`` means the remote's default branch).
- ``channel``: a tarball URL, e.g. nixpkgs' ``nixexprs.tar.xz``. A channel URL moves
  unless the configuration pins the tarball's ``sha256``; only a pinned one is cached.

A moving target answers ``cache_key=None``: its images are built on every request
(concurrent requests still share one build) and never served from the manifest cache.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

import anyio.to_thread
from cachetools import TTLCache

from nixfarm.config import SourceSettings
from nixfarm.errors import ConfigError

#: A path source's content is re-hashed at most this often: a warm pull must not walk
#: the tree, and an edit is picked up within a second.
PATH_RECHECK_SECONDS = 1.0
_COMMIT = re.compile(r"[0-9a-f]{40}")
_SKIP = {".git"}


@dataclass(frozen=True)
class Resolved:
    """One tag of a source, ready for image.nix; ``cache_key`` is None for moving targets."""

    spec: dict[str, str] = field(hash=False)
    cache_key: str | None
    #: Identifies the target even when it moves: what concurrent requests share.
    identity: str


class _FileHashes:
    """sha256 of files, remembered by (inode, size, mtime) so unchanged files are not re-read."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[tuple[int, int, int], str]] = {}

    def of(self, path: str, st: os.stat_result) -> str:
        signature = (st.st_ino, st.st_size, st.st_mtime_ns)
        known = self._known.get(path)
        if known is not None and known[0] == signature:
            return known[1]
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        self._known[path] = (signature, digest.hexdigest())
        return digest.hexdigest()


def content_hash(root: Path, hashes: _FileHashes | None = None) -> str:
    """A hash of the tree at ``root``: names, types, executable bits, bytes, link targets."""
    hashes = hashes or _FileHashes()
    total = hashlib.sha256()
    stack = [""]
    while stack:
        relative = stack.pop()
        directory = os.path.join(root, relative) if relative else str(root)
        for entry in sorted(os.listdir(directory), reverse=True):
            if entry in _SKIP:
                continue
            name = f"{relative}/{entry}" if relative else entry
            path = os.path.join(directory, entry)
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode):
                total.update(f"d {name}\n".encode())
                stack.append(name)
            elif stat.S_ISLNK(st.st_mode):
                total.update(f"l {name} {os.readlink(path)}\n".encode())
            elif stat.S_ISREG(st.st_mode):
                kind = "x" if st.st_mode & 0o111 else "f"
                total.update(f"{kind} {name} {hashes.of(path, st)}\n".encode())
    return total.hexdigest()


class PackageSource:
    """A configured package source (see the module docstring)."""

    def __init__(self, settings: SourceSettings) -> None:
        self.settings = settings
        self._hashes = _FileHashes()
        # The path's content hash, re-computed at most every PATH_RECHECK_SECONDS.
        self._recent: TTLCache[str, str] = TTLCache(maxsize=1, ttl=PATH_RECHECK_SECONDS)

    @property
    def kind(self) -> str:
        return self.settings.kind

    def describe(self) -> str:
        return f"{self.kind} {self.settings.location}"

    def _spec(self, **extra: str) -> dict[str, str]:
        spec = {"kind": self.kind, "location": self.settings.location,
                "entry": self.settings.entry, "ref": "", "rev": "", "sha256": ""}
        spec.update(extra)
        return spec

    async def resolve(self, tag: str) -> Resolved:
        """What ``tag`` means in this source, with its cache key if it cannot move."""
        location = self.settings.location
        if self.kind == "path":
            try:
                key = self._recent[location]
            except KeyError:  # one lookup: `in` then `[]` could straddle expiry
                key = await anyio.to_thread.run_sync(content_hash, Path(location), self._hashes)
                self._recent[location] = key
            return Resolved(self._spec(), f"path:{key}", f"path:{location}")
        if self.kind == "git":
            if _COMMIT.fullmatch(tag):
                return Resolved(self._spec(rev=tag), f"git:{location}:{tag}",
                                f"git:{location}:{tag}")
            ref = "" if tag == "latest" else tag
            return Resolved(self._spec(ref=ref), None, f"git:{location}:{tag}")
        if self.kind == "channel":
            pinned = self.settings.sha256
            pin = f"channel:{location}:{pinned}" if pinned else None
            return Resolved(self._spec(sha256=pinned), pin, f"channel:{location}")
        raise ConfigError("The registry has no package source configured: set "
                          "registry.source (or start the farm with `nixfarm up --demo`).",
                          key="registry.source")


def check(settings: SourceSettings) -> None:
    """Raise ConfigError if a configured source cannot work (checked at start-up)."""
    kind, location = settings.kind, settings.location
    if kind == "none":
        return
    if not location:
        raise ConfigError(f"registry.source.location is empty; a {kind} source needs one.",
                          key="registry.source.location")
    if settings.entry and (settings.entry.startswith("/") or ".." in settings.entry.split("/")):
        raise ConfigError(f"registry.source.entry {settings.entry!r} must be a relative path "
                          "inside the source.", key="registry.source.entry")
    if kind == "path":
        root = Path(location)
        if not root.is_absolute():
            raise ConfigError(f"registry.source.location {location!r} must be an absolute path.",
                              key="registry.source.location")
        entry = root / (settings.entry or "default.nix")
        if not root.is_dir() or not entry.exists():
            raise ConfigError(f"registry.source.location {location!r} is not a directory "
                              f"holding {entry.name}.", key="registry.source.location")
    elif kind in ("git", "channel") and not re.match(r"^(https?|ssh|git|file)://", location) \
            and not (kind == "git" and re.match(r"^[\w.-]+@[\w.-]+:", location)):
        raise ConfigError(f"registry.source.location {location!r} is not a URL.",
                          key="registry.source.location")

