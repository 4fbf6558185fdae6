"""Where the edge keeps its files, derived from the data directory."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the lean supervisor imports this module without pydantic
    from nixfarm.config import Settings

log = logging.getLogger(__name__)

#: Under which URL prefix nginx serves stored files the app hands over (X-Accel-Redirect).
ACCEL_PREFIX = "/_nixfarm/store/"


@dataclass(frozen=True)
class EdgeLayout:
    root: Path

    @classmethod
    def of(cls, settings: Settings) -> EdgeLayout:
        return cls(settings.data_dir.resolve() / "edge")

    @property
    def www(self) -> Path:
        """The published tree nginx serves GET and HEAD from."""
        return self.root / "www"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def empty(self) -> Path:
        """A directory that stays empty: nginx's root for methods it must not answer."""
        return self.run / "empty"

    @property
    def app_socket(self) -> Path:
        return self.run / "app.sock"

    @property
    def access_log(self) -> Path:
        return self.run / "access.log"

    @property
    def access_lock(self) -> Path:
        return self.run / "access.lock"

    @property
    def config(self) -> Path:
        return self.run / "nginx.conf"

    def nginx_args(self) -> list[str]:
        """The arguments that point nginx at this configuration and prefix."""
        return ["-c", str(self.config), "-p", str(self.run)]

    def signal_nginx(self, signum: int, why: str) -> None:
        """Send nginx's master ``signum`` (a reload, a log reopen); a failure is logged
        (``why`` says what for): the next request still reaches the app."""
        try:
            os.kill(int(self.pid_file.read_text().strip()), signum)
        except (OSError, ValueError) as e:
            log.warning("edge: could not %s: %s", why, e)

    @property
    def pid_file(self) -> Path:
        return self.run / "nginx.pid"

    @property
    def tags_map(self) -> Path:
        return self.run / "tags.map"

    @property
    def tags_lock(self) -> Path:
        return self.run / "tags.lock"

    def reset(self) -> None:
        """Start from an empty tree: what was published by an earlier run may be stale."""
        if self.root.exists():
            stale = self.root.with_name(f"edge.stale.{id(self)}")
            self.root.rename(stale)
            shutil.rmtree(stale, ignore_errors=True)
        for directory in (self.www, self.run, self.empty, self.run / "temp"):
            directory.mkdir(parents=True, exist_ok=True)
        self.tags_map.write_text("")
