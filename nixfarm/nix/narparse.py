"""Reading NARs as a stream: validation, and the ``.ls`` listing Nix publishes.

Uploads arrive in chunks of whatever size the network delivers, so the parser is a
push parser: :class:`NarValidator` buffers only the bytes of the token it is waiting
for, and file contents are skipped over as they stream by, never collected.

The grammar is a recursive one (see :mod:`nixfarm.nix.nar`). It is written here as a
recursive generator that *asks* for input: it yields ``(READ, n)`` to get the next
``n`` bytes sent back, or ``(SKIP, n)`` to let ``n`` bytes of file contents pass. The
driver, :meth:`NarValidator.feed`, answers those requests from whatever it has and
parks the generator until more input comes. That keeps the grammar readable as
straight-line code while the input is pushed at it.

Only the canonical encoding Nix writes is accepted: ``executable`` before
``contents``, zero padding, entries strictly sorted, no ``.``/``..``/``/``/NUL names,
nothing after the final ``)``. Any other spelling would have a different hash anyway.
Sizes of names and targets are bounded so a hostile stream cannot make us buffer
without limit.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Iterable
from typing import Any

from nixfarm.errors import InvalidInput

MAGIC = b"nix-archive-1"

_READ = 0
_SKIP = 1
_MAX_TOKEN = 64
_MAX_NAME = 255
_MAX_TARGET = 4096
_MAX_DEPTH = 512

_Request = tuple[int, int]
_Parser = Generator[_Request, bytes, Any]


def _bad(reason: str) -> InvalidInput:
    return InvalidInput(f"Not a valid NAR: {reason}.", "nar")


class NarValidator:
    """Checks that the chunks fed to it form one well-formed NAR.

    ``feed`` raises InvalidInput as soon as the stream goes wrong; ``finish`` raises it
    if the stream ended early. After ``finish``, ``listing`` holds the root node in the
    shape of Nix's ``.ls`` files and ``size`` the number of bytes seen.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._start = 0
        self._offset = 0
        self._root: dict[str, Any] | None = None
        self._parser: _Parser = self._archive()
        self._request: _Request | None = next(self._parser)

    @property
    def size(self) -> int:
        return self._offset + len(self._buffer) - self._start

    @property
    def listing(self) -> dict[str, Any]:
        if self._root is None:
            raise InvalidInput("The NAR listing is only known once the NAR is complete.", "nar")
        return {"version": 1, "root": self._root}

    def feed(self, chunk: bytes) -> None:
        if self._request is None:
            if chunk:
                raise _bad("data follows the end of the archive")
            return
        self._buffer += chunk
        self._pump()

    def finish(self) -> None:
        if self._request is not None:
            raise _bad("the archive ends early")

    def _pump(self) -> None:
        while self._request is not None:
            kind, wanted = self._request
            available = len(self._buffer) - self._start
            if kind == _SKIP:
                taken = min(wanted, available)
                self._start += taken
                self._offset += taken
                if taken < wanted:
                    self._request = (_SKIP, wanted - taken)
                    break
                reply = b""
            else:
                if available < wanted:
                    break
                reply = bytes(self._buffer[self._start : self._start + wanted])
                self._start += wanted
                self._offset += wanted
            try:
                self._request = self._parser.send(reply)
            except StopIteration:
                self._request = None
        # Drop consumed bytes now and then rather than on every token.
        if self._start > 65536 or self._start == len(self._buffer):
            del self._buffer[: self._start]
            self._start = 0
        if self._request is None and self._start < len(self._buffer):
            raise _bad("data follows the end of the archive")

    # The grammar, as generators asking for input.

    def _u64(self) -> Generator[_Request, bytes, int]:
        data = yield (_READ, 8)
        return int.from_bytes(data, "little")

    def _string(self, limit: int, what: str) -> Generator[_Request, bytes, bytes]:
        length = yield from self._u64()
        if length > limit:
            raise _bad(f"a {what} of {length} bytes is too long")
        padded = length + (-length) % 8
        data = yield (_READ, padded)
        if any(data[length:]):
            raise _bad("padding is not zero")
        return data[:length]

    def _expect(self, token: bytes) -> Generator[_Request, bytes, None]:
        got = yield from self._string(_MAX_TOKEN, "token")
        if got != token:
            raise _bad(f"expected {token.decode()!r}, found {got[:32]!r}")

    def _archive(self) -> _Parser:
        yield from self._expect(MAGIC)
        self._root = yield from self._node(0)

    def _node(self, depth: int) -> Generator[_Request, bytes, dict[str, Any]]:
        if depth > _MAX_DEPTH:
            raise _bad(f"directories nest deeper than {_MAX_DEPTH} levels")
        yield from self._expect(b"(")
        yield from self._expect(b"type")
        kind = yield from self._string(_MAX_TOKEN, "type")
        node: dict[str, Any]
        if kind == b"regular":
            node = yield from self._regular()
        elif kind == b"symlink":
            yield from self._expect(b"target")
            target = yield from self._string(_MAX_TARGET, "symlink target")
            if not target or b"\0" in target:
                raise _bad("a symlink target is empty or has a NUL byte")
            node = {"type": "symlink", "target": target.decode(errors="replace")}
            yield from self._expect(b")")
        elif kind == b"directory":
            node = yield from self._directory(depth)
        else:
            raise _bad(f"unknown node type {kind[:32]!r}")
        return node

    def _regular(self) -> Generator[_Request, bytes, dict[str, Any]]:
        tag = yield from self._string(_MAX_TOKEN, "token")
        executable = tag == b"executable"
        if executable:
            marker = yield from self._string(_MAX_TOKEN, "executable marker")
            if marker:
                raise _bad("the executable marker is not empty")
            tag = yield from self._string(_MAX_TOKEN, "token")
        if tag != b"contents":
            raise _bad(f"expected 'contents', found {tag[:32]!r}")
        size = yield from self._u64()
        offset = self._offset
        if size:
            yield (_SKIP, size)
        if size % 8:
            padding = yield (_READ, (-size) % 8)
            if any(padding):
                raise _bad("padding is not zero")
        yield from self._expect(b")")
        node: dict[str, Any] = {"type": "regular", "size": size}
        if executable:
            node["executable"] = True
        node["narOffset"] = offset
        return node

    def _directory(self, depth: int) -> Generator[_Request, bytes, dict[str, Any]]:
        entries: dict[str, Any] = {}
        previous: bytes | None = None
        while True:
            tag = yield from self._string(_MAX_TOKEN, "token")
            if tag == b")":
                return {"type": "directory", "entries": entries}
            if tag != b"entry":
                raise _bad(f"expected 'entry' or ')', found {tag[:32]!r}")
            yield from self._expect(b"(")
            yield from self._expect(b"name")
            name = yield from self._string(_MAX_NAME, "file name")
            if name in (b"", b".", b"..") or b"/" in name or b"\0" in name:
                raise _bad(f"invalid file name {name!r}")
            if previous is not None and name <= previous:
                raise _bad("directory entries are not sorted")
            previous = name
            yield from self._expect(b"node")
            entries[name.decode(errors="replace")] = yield from self._node(depth + 1)
            yield from self._expect(b")")


def list_nar(chunks: Iterable[bytes]) -> dict[str, Any]:
    """Nix's ``.ls`` listing of a NAR: ``{"version": 1, "root": {...}}``.

    Regular files carry ``size``, ``narOffset`` (where their bytes start in the NAR)
    and ``executable`` when set; symlinks ``target``; directories ``entries``.
    """
    validator = NarValidator()
    for chunk in chunks:
        validator.feed(chunk)
    validator.finish()
    return validator.listing


def render_listing(listing: dict[str, Any]) -> str:
    """The listing as compact JSON, byte for byte as Nix writes ``.ls`` files (its keys
    come in the order the listing was built, which is the order Nix writes them)."""
    return json.dumps(listing, separators=(",", ":"), ensure_ascii=False)
