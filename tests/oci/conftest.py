"""Fixtures for the OCI format tests: directories laid out like Nix store paths."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

LONG_DIR = "d" * 120
LONG_FILE = "f" * 99


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass(frozen=True)
class Store:
    """A fake store directory and the store paths in it."""

    root: Path
    hello: Path
    lib: Path
    single: Path

    @property
    def paths(self) -> list[Path]:
        return [self.hello, self.lib, self.single]


def make_store(root: Path) -> Store:
    """Three store paths exercising every entry kind a layer can hold.

    Modes and times are deliberately untidy (0644, 0700, now) to show the layer
    normalises them.
    """
    root.mkdir(parents=True)
    hello = root / ("a" * 32 + "-hello-2.12")
    lib = root / ("b" * 32 + "-libfoo-1.0")
    single = root / ("c" * 32 + "-config.json")
    (hello / "bin").mkdir(parents=True)
    (hello / "bin" / "hello").write_bytes(b"#!/bin/sh\necho Hello, world!\n")
    (hello / "bin" / "hello").chmod(0o700)
    (hello / "bin" / "hi").symlink_to("hello")
    (hello / "share" / "empty").mkdir(parents=True)
    (hello / "lib").symlink_to("/nix/store/" + lib.name + "/lib")
    (lib / "lib").mkdir(parents=True)
    (lib / "lib" / "libfoo.so").write_bytes(os.urandom(300_000))
    (lib / "lib" / "libfoo.so.1").hardlink_to(lib / "lib" / "libfoo.so")
    (lib / "lib" / "zero").write_bytes(b"")
    (lib / "lib" / "a-b").write_bytes(b"sorts after the a/ directory")
    (lib / "lib" / "a").mkdir()
    (lib / "lib" / "a" / "x").write_bytes(b"x")
    deep = lib / LONG_DIR / LONG_DIR
    deep.mkdir(parents=True)
    (deep / LONG_FILE).write_bytes(b"long name")
    (lib / "lib" / "far").symlink_to("../" + LONG_DIR + "/" + LONG_DIR + "/" + LONG_FILE)
    single.write_bytes(b'{"not": "a directory"}\n')
    return Store(root, hello, lib, single)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return make_store(tmp_path / "store")
