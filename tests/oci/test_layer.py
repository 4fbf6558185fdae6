"""Layers written by nixfarm, read back by GNU tar, gzip, zstd and Python's tarfile."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import subprocess
import tarfile
import tracemalloc
from pathlib import Path

import pytest
import zstandard

from nixfarm.errors import InvalidInput
from nixfarm.oci.digest import Digest
from nixfarm.oci.layer import (
    CHUNK,
    write_customisation_layer,
    write_customisation_layer_async,
    write_layer,
    write_layer_async,
)
from nixfarm.oci.manifest import Compression, LayerInfo
from tests.oci.conftest import LONG_DIR, LONG_FILE, Store, make_store

COMPRESSIONS: list[Compression] = ["gzip", "zstd"]


def written(paths: list[Path], compression: Compression = "gzip") -> tuple[LayerInfo, bytes]:
    out = io.BytesIO()
    info = write_layer(paths, out.write, compression=compression)
    return info, out.getvalue()


def decompress(data: bytes, compression: Compression) -> bytes:
    if compression == "gzip":
        return gzip.decompress(data)
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


def gnu_untar(blob: Path, compression: Compression, into: Path) -> None:
    into.mkdir()
    flag = "-z" if compression == "gzip" else "--zstd"
    subprocess.run(["tar", flag, "-xpf", str(blob), "-C", str(into)], check=True)


def tree(root: Path) -> dict[str, tuple[object, ...]]:
    """Every entry under ``root``: kind, permission bits, and content or target."""
    found: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = str(path.relative_to(root))
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                found[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                found[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                found[rel] = ("file", stat.S_IMODE(st.st_mode), path.read_bytes())
    return found


def expected_tree(store: Store) -> dict[str, tuple[object, ...]]:
    """What the fixture store should unpack to: modes normalised as a NAR has them."""
    want: dict[str, tuple[object, ...]] = {"nix": ("dir", 0o755), "nix/store": ("dir", 0o755)}
    for top in store.paths:
        for path in [top, *sorted(top.rglob("*"))]:
            rel = "nix/store/" + str(path.relative_to(store.root))
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                want[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                want[rel] = ("dir", 0o555)
            else:
                mode = 0o555 if st.st_mode & 0o100 else 0o444
                want[rel] = ("file", mode, path.read_bytes())
    return want


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_digests_describe_the_bytes_written(store: Store, compression: Compression) -> None:
    info, blob = written(store.paths, compression)
    assert info.compression == compression
    assert info.size == len(blob)
    assert info.digest == Digest.of(blob)
    assert info.diff_id == Digest.of(decompress(blob, compression))


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_gnu_tar_unpacks_the_store_tree(
    store: Store, compression: Compression, tmp_path: Path
) -> None:
    _, blob = written(store.paths, compression)
    (tmp_path / "layer").write_bytes(blob)
    gnu_untar(tmp_path / "layer", compression, tmp_path / "root")
    assert tree(tmp_path / "root") == expected_tree(store)
    hello = tmp_path / "root/nix/store" / store.hello.name / "bin/hello"
    assert os.access(hello, os.X_OK)
    lib = tmp_path / "root/nix/store" / store.lib.name / "lib"
    # Hard-linked files stay linked: one inode, written once.
    assert (lib / "libfoo.so").stat().st_ino == (lib / "libfoo.so.1").stat().st_ino
    assert (lib / "far").read_bytes() == b"long name"


def test_entries_are_in_gnu_tar_sort_name_order(tmp_path: Path) -> None:
    store = make_store(tmp_path / "root/nix/store")
    _, blob = written(store.paths)
    ours = subprocess.run(
        ["tar", "-tzf", "-"], input=blob, capture_output=True, check=True
    ).stdout.splitlines()
    gnu = subprocess.run(
        f"tar --sort=name -cf - -C {tmp_path / 'root'} nix | tar -tf -",
        shell=True,
        capture_output=True,
        check=True,
    ).stdout.splitlines()
    assert ours == gnu
    assert ours[:2] == [b"nix/", b"nix/store/"]
    assert len(max(ours, key=len)) > 256  # one name needed a PAX header


def test_entries_are_root_owned_with_fixed_mtime(store: Store) -> None:
    _, blob = written(store.paths)
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as archive:
        members = archive.getmembers()
    assert {(m.uid, m.gid, m.uname, m.gname, m.mtime) for m in members} == {(0, 0, "", "", 1)}
    links = [m for m in members if m.islnk()]
    assert [(m.name.rsplit("/", 1)[1], m.linkname.rsplit("/", 1)[1]) for m in links] == [
        ("libfoo.so.1", "libfoo.so")
    ]
    long_file = next(m for m in members if m.name.endswith(LONG_FILE))
    assert long_file.name == f"nix/store/{store.lib.name}/{LONG_DIR}/{LONG_DIR}/{LONG_FILE}"


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_same_contents_give_the_same_layer(tmp_path: Path, compression: Compression) -> None:
    first = make_store(tmp_path / "one")
    second = make_store(tmp_path / "two")
    # Same names and contents, different modes, times and order of the arguments.
    for path in second.root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.write_bytes((first.root / path.relative_to(second.root)).read_bytes())
            path.chmod(0o755 if os.access(path, os.X_OK) else 0o600)
            os.utime(path, (1_700_000_000, 1_700_000_000))
    a, blob_a = written(first.paths, compression)
    b, blob_b = written(list(reversed(second.paths)), compression)
    assert blob_a == blob_b
    assert a == b


def test_a_layer_of_no_paths_holds_the_store_directories() -> None:
    _, blob = written([])
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as archive:
        assert archive.getnames() == ["nix", "nix/store"]


def test_memory_stays_flat_on_a_large_file(tmp_path: Path) -> None:
    big = tmp_path / ("d" * 32 + "-big")
    big.mkdir()
    size = 256 * CHUNK
    with open(big / "data", "wb") as f:
        f.truncate(size)  # sparse: costs no disk, reads as zeros
    hasher = hashlib.sha256()
    tracemalloc.start()
    try:
        info = write_layer([big], hasher.update)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.digest == Digest.from_hasher(hasher)
    assert peak < 4 * CHUNK, f"peak {peak} bytes for a {size}-byte file"


def test_sink_gets_bounded_chunks(store: Store) -> None:
    sizes: list[int] = []
    write_layer(store.paths, lambda chunk: sizes.append(len(chunk)), compression="zstd")
    assert sizes and all(0 < n <= 2 * CHUNK for n in sizes)


def test_bad_arguments_are_invalid_input(store: Store, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput):
        write_layer(store.paths, lambda _: None, compression="xz")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        write_layer(store.paths, lambda _: None, compression="gzip", level=6)
    with pytest.raises(InvalidInput):
        write_layer(store.paths, lambda _: None, compression="zstd", level=0)
    twin = tmp_path / "other" / store.hello.name
    twin.mkdir(parents=True)
    with pytest.raises(InvalidInput):
        write_layer([store.hello, twin], lambda _: None)
    fifo = tmp_path / ("e" * 32 + "-fifo")
    os.mkfifo(fifo)
    with pytest.raises(InvalidInput):
        write_layer([fifo], lambda _: None)


PASSWD = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/var/empty:/bin/false\n"
GROUP = b"root:x:0:\nnobody:x:65534:\n"


def customisation(compression: Compression = "gzip") -> tuple[LayerInfo, bytes]:
    out = io.BytesIO()
    info = write_customisation_layer(
        symlinks={
            "/bin/hello": "/nix/store/" + "a" * 32 + "-hello-2.12/bin/hello",
            "/usr/bin/env": "/nix/store/" + "f" * 32 + "-coreutils/bin/env",
            "bin/sh": "/nix/store/" + "e" * 32 + "-busybox/bin/busybox",
        },
        files={"/etc/passwd": (PASSWD, 0o644), "/etc/group": (GROUP, 0o644)},
        dirs={"/tmp": 0o1777, "/var/empty": 0o555},
        sink=out.write,
        compression=compression,
    )
    return info, out.getvalue()


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_customisation_layer_unpacks_to_a_root(tmp_path: Path, compression: Compression) -> None:
    info, blob = customisation(compression)
    assert info.digest == Digest.of(blob)
    assert info.diff_id == Digest.of(decompress(blob, compression))
    (tmp_path / "layer").write_bytes(blob)
    gnu_untar(tmp_path / "layer", compression, tmp_path / "root")
    assert tree(tmp_path / "root") == {
        "bin": ("dir", 0o755),
        "bin/hello": ("link", "/nix/store/" + "a" * 32 + "-hello-2.12/bin/hello"),
        "bin/sh": ("link", "/nix/store/" + "e" * 32 + "-busybox/bin/busybox"),
        "etc": ("dir", 0o755),
        "etc/group": ("file", 0o644, GROUP),
        "etc/passwd": ("file", 0o644, PASSWD),
        "tmp": ("dir", 0o1777),
        "usr": ("dir", 0o755),
        "usr/bin": ("dir", 0o755),
        "usr/bin/env": ("link", "/nix/store/" + "f" * 32 + "-coreutils/bin/env"),
        "var": ("dir", 0o755),
        "var/empty": ("dir", 0o555),
    }
    listing = subprocess.run(
        ["tar", "-tf", str(tmp_path / "layer")], capture_output=True, check=True
    ).stdout.split()
    assert listing == sorted(listing)  # all names here sort the same either way


def test_customisation_layer_is_deterministic() -> None:
    assert customisation() == customisation()
    # A plain list of directories means mode 0755.
    out = io.BytesIO()
    write_customisation_layer({}, {}, ["/a/b"], out.write)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue()), mode="r:gz") as archive:
        assert [(m.name, m.mode) for m in archive.getmembers()] == [
            ("a", 0o755),
            ("a/b", 0o755),
        ]


@pytest.mark.parametrize(
    ("symlinks", "files", "dirs"),
    [
        ({"../etc/x": "y"}, {}, []),
        ({"/": "y"}, {}, []),
        ({}, {"/etc/./passwd": (b"", 0o644)}, []),
        ({}, {"/etc//passwd": (b"", 0o644)}, []),
        ({}, {"/etc/pass\0wd": (b"", 0o644)}, []),
        ({"/bin/sh": "x"}, {"/bin/sh": (b"", 0o755)}, []),
        ({}, {"/etc": (b"", 0o644), "/etc/passwd": (b"", 0o644)}, []),
        ({}, {"/tmp/x": (b"", 0o644)}, {"/tmp/x": 0o755}),
    ],
)
def test_customisation_layer_rejects_bad_paths(
    symlinks: dict[str, str], files: dict[str, tuple[bytes, int]], dirs: dict[str, int]
) -> None:
    with pytest.raises(InvalidInput):
        write_customisation_layer(symlinks, files, dirs, lambda _: None)


@pytest.mark.anyio
async def test_async_writers_match_the_sync_ones(store: Store) -> None:
    chunks: list[bytes] = []

    async def sink(chunk: bytes) -> None:
        chunks.append(chunk)

    info = await write_layer_async(store.paths, sink, compression="zstd")
    assert (info, b"".join(chunks)) == written(store.paths, "zstd")
    chunks.clear()
    info = await write_customisation_layer_async(
        {"/bin/hello": "/nix/store/" + "a" * 32 + "-hello-2.12/bin/hello"},
        {},
        [],
        sink,
    )
    out = io.BytesIO()
    expected = write_customisation_layer(
        {"/bin/hello": "/nix/store/" + "a" * 32 + "-hello-2.12/bin/hello"}, {}, [], out.write
    )
    assert (info, b"".join(chunks)) == (expected, out.getvalue())
