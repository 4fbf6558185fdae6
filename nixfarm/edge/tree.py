"""What the app publishes for nginx to answer without it (see the package docstring).

Every write is atomic (a temporary file in the same directory, renamed into place), so
nginx never sends half a file; every failure to publish is logged and swallowed: the
app has already answered, and an unpublished answer only means the next request comes
to the app again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

from nixfarm.edge.layout import EdgeLayout

log = logging.getLogger(__name__)

_SAFE = re.compile(r"[A-Za-z0-9._/:+=?-]+")
_MAP_LINE = re.compile(r'^"(?P<uri>[^"]+)" (?P<value>[0-9a-f]{64});$')


def _check(relative: str) -> str:
    # Callers pass paths built from validated names; refuse anything else outright.
    if not _SAFE.fullmatch(relative) or ".." in relative.split("/") or relative.startswith("/"):
        raise ValueError(f"refusing to publish {relative!r}")
    return relative


class EdgeTree:
    def __init__(self, layout: EdgeLayout) -> None:
        self.layout = layout

    def path(self, relative: str) -> Path:
        return self.layout.www / _check(relative)

    def has(self, relative: str) -> bool:
        return self.path(relative).exists()

    def publish(self, relative: str, data: bytes) -> None:
        """Write ``data`` to be served at ``/relative``."""
        target = self.path(relative)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=".publish-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.chmod(temporary, 0o644)
                os.replace(temporary, target)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temporary)
                raise
        except OSError as e:
            log.warning("edge: could not publish %s: %s", relative, e)

    def link(self, relative: str, source: Path) -> bool:
        """Serve the stored file ``source`` at ``/relative`` (a hard link); False if the
        tree and the store are on different filesystems (then the app keeps sending it)."""
        target = self.path(relative)
        if target.exists():
            return True
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            temporary = target.with_name(f".link-{os.getpid()}-{target.name}")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            os.link(source, temporary)
            os.replace(temporary, target)
            return True
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM):
                log.warning("edge: could not link %s: %s", relative, e)
            return False

    def remove(self, relative: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(relative).unlink()

    # -- tags: an nginx map from request URI to a manifest digest -------------------------

    def tags(self) -> dict[str, str]:
        with self._tags_locked():
            return self._read_tags()

    def add_tag(self, uri: str, hex_digest: str) -> bool:
        """Let nginx answer GET/HEAD ``uri`` with the manifest ``hex_digest`` (published)
        once it next reloads (the caller decides when: :meth:`reload`); False if the map
        already said so."""
        if not _SAFE.fullmatch(uri) or not re.fullmatch(r"[0-9a-f]{64}", hex_digest):
            raise ValueError(f"refusing to publish tag {uri!r}")
        with self._tags_locked():
            tags = self._read_tags()
            if tags.get(uri) == hex_digest:
                return False
            tags[uri] = hex_digest
            self._write_tags(tags)
        return True

    def clear_tags(self) -> None:
        with self._tags_locked():
            if not self._read_tags():
                return
            self._write_tags({})
        self.reload()

    @contextlib.contextmanager
    def _tags_locked(self) -> Iterator[None]:
        # Several worker processes may publish at once: read-modify-write under a lock.
        with open(self.layout.tags_lock, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read_tags(self) -> dict[str, str]:
        tags: dict[str, str] = {}
        with contextlib.suppress(FileNotFoundError):
            for line in self.layout.tags_map.read_text().splitlines():
                match = _MAP_LINE.match(line)
                if match:
                    tags[match["uri"]] = match["value"]
        return tags

    def _write_tags(self, tags: dict[str, str]) -> None:
        text = "".join(f'"{uri}" {value};\n' for uri, value in sorted(tags.items()))
        fd, temporary = tempfile.mkstemp(dir=self.layout.run, prefix=".tags-")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, self.layout.tags_map)

    def reload(self) -> None:
        """Ask nginx to read its configuration (and so the tags map) again."""
        self.layout.signal_nginx(signal.SIGHUP, "reload nginx")
