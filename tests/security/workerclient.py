"""A raw Nix worker-protocol client, as an attacker inside a job would write one.

It speaks to a job's socket (``runner.nixproxy``) what no Nix client would send: hand
written derivations, floods of connections and options. Synchronous (run it in a thread
when the proxy runs in the test's event loop).
"""

from __future__ import annotations

import hashlib
import socket
import struct
from pathlib import Path

from nixfarm.nix import nix32

MAGIC_1 = 0x6E697863
MAGIC_2 = 0x6478696F
VERSION = 1 << 8 | 34
NEXT, READ, WRITE = 0x6F6C6D67, 0x64617461, 0x64617416
LAST, ERROR = 0x616C7473, 0x63787470
START, STOP, RESULT = 0x53545254, 0x53544F50, 0x52534C54


class DaemonError(Exception):
    """The other side answered STDERR_ERROR (its message), or hung up; ``said``: what
    it said before."""

    def __init__(self, message: str, said: list[str] | None = None) -> None:
        super().__init__(message)
        self.said = said or []


def store_path(kind: str, digest: bytes, name: str) -> str:
    """Nix's makeStorePath, written again here (not the proxy's)."""
    full = hashlib.sha256(f"{kind}:sha256:{digest.hex()}:/nix/store:{name}".encode()).digest()
    short = bytearray(20)
    for index, byte in enumerate(full):
        short[index % 20] ^= byte
    return f"/nix/store/{nix32.encode(bytes(short))}-{name}"


def _quote(text: str) -> str:
    escaped = (text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
               .replace("\r", "\\r").replace("\t", "\\t"))
    return f'"{escaped}"'


def _list(items: list[str]) -> str:
    return "[" + ",".join(items) + "]"


def derivation(name: str, builder: str, args: list[str], input_srcs: list[str],
               input_drvs: dict[str, list[str]] | None = None,
               references: tuple[str, ...] = ()) -> tuple[str, str, str]:
    """A hand-written input-addressed derivation with one output: (its ATerm text, the
    path it has when added with ``references`` declared, its output path). Only for
    derivations without ``input_drvs`` is the output path right (their hashes are not
    looked up)."""
    drvs = input_drvs or {}

    def text(out: str) -> str:
        env = {"builder": builder, "name": name, "out": out, "system": "x86_64-linux"}
        return ("Derive(" + _list([f'("out",{_quote(out)},"","")']) + ","
                + _list([f"({_quote(d)},{_list([_quote(o) for o in sorted(outs)])})"
                         for d, outs in sorted(drvs.items())]) + ","
                + _list([_quote(s) for s in sorted(input_srcs)]) + ","
                + _quote("x86_64-linux") + "," + _quote(builder) + ","
                + _list([_quote(a) for a in args]) + ","
                + _list([f"({_quote(k)},{_quote(v)})" for k, v in sorted(env.items())]) + ")")

    masked = hashlib.sha256(text("").encode()).digest()
    out = store_path("output:out", masked, name)
    full = text(out)
    kind = "text" + "".join(f":{r}" for r in sorted(references))
    drv = store_path(kind, hashlib.sha256(full.encode()).digest(), f"{name}.drv")
    return full, drv, out


class Client:
    """One connection, handshake done."""

    def __init__(self, path: Path, timeout: float = 120) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.settimeout(timeout)
            self.sock.connect(str(path))
            self.sock.sendall(self._u64(MAGIC_1))
            if self.u64() != MAGIC_2:
                raise DaemonError("not a Nix daemon")
            self.minor = min(self.u64(), VERSION) & 0xFF
            self.sock.sendall(self._u64(VERSION) + self._u64(0) + self._u64(0))
            if self.minor >= 33:
                self.string()  # the daemon's Nix version
            self.wait()
        except BaseException:
            self.sock.close()  # a refused connection leaks no socket
            raise

    def close(self) -> None:
        self.sock.close()

    @staticmethod
    def _u64(value: int) -> bytes:
        return struct.pack("<Q", value)

    @classmethod
    def _string(cls, data: bytes | str) -> bytes:
        raw = data.encode() if isinstance(data, str) else data
        return cls._u64(len(raw)) + raw + b"\0" * (-len(raw) % 8)

    @classmethod
    def _strings(cls, items: list[str]) -> bytes:
        return cls._u64(len(items)) + b"".join(cls._string(i) for i in items)

    def exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise DaemonError("the daemon hung up")
            data += chunk
        return data

    def u64(self) -> int:
        value: int = struct.unpack("<Q", self.exactly(8))[0]
        return value

    def string(self) -> bytes:
        size = self.u64()
        data = self.exactly(size)
        self.exactly(-size % 8)
        return data

    def strings(self) -> list[str]:
        return [self.string().decode() for _ in range(self.u64())]

    def _fields(self) -> None:
        for _ in range(self.u64()):
            if self.u64() == 0:
                self.u64()
            else:
                self.string()

    def wait(self) -> list[str]:
        """Read the daemon's messages up to STDERR_LAST; raise DaemonError on an error."""
        said: list[str] = []
        while True:
            code = self.u64()
            if code == LAST:
                return said
            if code in (NEXT, WRITE):
                said.append(self.string().decode(errors="replace"))
            elif code == READ:
                self.u64()
            elif code == ERROR:
                self.string()  # "Error"
                self.u64()  # level
                self.string()  # "Error"
                message = self.string().decode(errors="replace")
                if self.u64():
                    raise DaemonError(message, said)  # a position: not from these requests
                for _ in range(self.u64()):
                    if self.u64():
                        raise DaemonError(message, said)
                    self.string()
                raise DaemonError(message, said)
            elif code == START:
                self.u64()
                self.u64()
                self.u64()
                said.append(self.string().decode(errors="replace"))
                self._fields()
                self.u64()
            elif code == STOP:
                self.u64()
            elif code == RESULT:
                self.u64()
                self.u64()
                self._fields()
            else:
                raise DaemonError(f"unknown message {code:#x}")

    def send(self, op: int, body: bytes) -> None:
        self.sock.sendall(self._u64(op) + body)

    def is_valid(self, path: str) -> bool:
        self.send(1, self._string(path))
        self.wait()
        return self.u64() != 0

    def add_text(self, name: str, text: str, references: list[str]) -> str:
        """AddToStore, the text method: the path the daemon made."""
        data = text.encode()
        self.send(7, self._string(name) + self._string("text:sha256")
                  + self._strings(references) + self._u64(0)
                  + self._u64(len(data)) + data + self._u64(0))
        self.wait()
        path = self.string().decode()
        self.string()  # deriver
        self.string()  # narHash
        self.strings()  # references
        self.u64()  # registration time
        self.u64()  # nar size
        self.u64()  # ultimate
        self.strings()  # signatures
        self.string()  # content address
        return path

    def set_options(self, keep_failed: bool = False, max_jobs: int = 1, cores: int = 1,
                    overrides: dict[str, str] | None = None) -> None:
        """SetOptions (verbosity: talkative, so the daemon says what it does)."""
        fields = [int(keep_failed), 0, 0, 3, max_jobs, 0, 1, 3, 0, 0, cores, 1]
        pairs = overrides or {}
        self.send(19, b"".join(map(self._u64, fields)) + self._u64(len(pairs))
                  + b"".join(self._string(k) + self._string(v) for k, v in pairs.items()))
        self.wait()

    def valid_paths(self, paths: list[str]) -> list[str]:
        """QueryValidPaths (no substitution)."""
        self.send(31, self._strings(paths) + self._u64(0))
        self.wait()
        return self.strings()

    def build(self, paths: list[str]) -> None:
        self.send(9, self._strings(paths) + self._u64(0))
        self.wait()
        self.u64()

    def nar(self, path: str, limit: int = 1 << 20) -> bytes:
        """NarFromPath: the NAR's bytes (read until the daemon stops sending, or
        ``limit``)."""
        self.send(38, self._string(path))
        self.wait()
        self.sock.settimeout(5)
        data = b""
        try:
            while len(data) < limit and (chunk := self.sock.recv(65536)):
                data += chunk
        except TimeoutError:
            pass
        return data
