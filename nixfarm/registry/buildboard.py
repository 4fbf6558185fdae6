"""The registry's build board: recent image builds, their state and live logs.

Each build the registry starts gets an id; Nix's stderr lines are appended to it as they
arrive, and followers (the status page, ``curl .../log``) are woken for each one. The
board keeps the last builds in memory only: it is a window onto what this server is
doing, not a history (the server's log has every line too).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

from cachetools import LRUCache

MAX_BUILDS = 100
MAX_LINES = 20_000

State = Literal["running", "succeeded", "failed", "timed out"]


@dataclass
class Build:
    id: str
    image: str
    started: float = field(default_factory=time.time)
    finished: float | None = None
    state: State = "running"
    message: str = ""
    lines: list[str] = field(default_factory=list)
    dropped: int = 0
    _changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def append(self, line: str) -> None:
        if len(self.lines) >= MAX_LINES:
            # Keep the first half (what started) and the most recent lines.
            del self.lines[MAX_LINES // 2]
            self.dropped += 1
        self.lines.append(line)
        self._wake()

    def finish(self, state: State, message: str = "") -> None:
        self.state, self.message, self.finished = state, message, time.time()
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def follow(self) -> AsyncIterator[str]:
        """Every line so far, then each new one, until the build is over."""
        sent = 0
        while True:
            changed = self._changed
            while sent < len(self.lines):
                yield self.lines[sent]
                sent += 1
            if self.state != "running":
                return
            await changed.wait()

    def summary(self) -> dict[str, object]:
        return {"id": self.id, "image": self.image, "state": self.state,
                "started": self.started, "finished": self.finished,
                "message": self.message, "lines": len(self.lines)}


class BuildBoard:
    def __init__(self) -> None:
        # The last builds (one looked at recently stays a little longer).
        self._builds: LRUCache[str, Build] = LRUCache(maxsize=MAX_BUILDS)
        self.started = 0

    def start(self, image: str) -> Build:
        build = Build(id=uuid.uuid4().hex[:12], image=image)
        self._builds[build.id] = build
        self.started += 1
        return build

    def get(self, build_id: str) -> Build | None:
        return self._builds.get(build_id)

    def recent(self) -> list[Build]:
        """The remembered builds, the last started first."""
        return sorted(self._builds.values(), key=lambda build: build.started, reverse=True)
