"""NAR writing checked byte for byte against ``nix-store --dump``, and hashes against
what Nix records for real store paths."""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import pytest

from nixfarm.errors import InvalidInput
from nixfarm.nix import nar
from nixfarm.nix.hashes import parse_hash
from nixfarm.nix.narparse import render_listing
from tests.nix.conftest import FIXTURES, NIX_COMMAND, nix


def nix_dump(path: Path | str) -> bytes:
    return subprocess.run(
        ["nix-store", "--dump", str(path)], capture_output=True, check=True
    ).stdout


def ours(path: Path | str, chunk_size: int = 1 << 20) -> bytes:
    return b"".join(nar.dump(Path(path), chunk_size))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Everything a NAR can hold, with names that sort differently as text and bytes."""
    root = tmp_path / "tree"
    (root / "sub" / "deeper" / "deepest").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    for name in ["B", "a", "a-b", "a.b", "ab", "Z", "\u00e9t\u00e9", "zz"]:
        (root / name).write_bytes(name.encode() * 3)
    (root / "empty").write_bytes(b"")
    (root / "eight").write_bytes(b"12345678")
    (root / "nine").write_bytes(b"123456789")
    # Fixed contents, so that repeated runs add the same store path.
    (root / "big").write_bytes(random.Random(1).randbytes((3 << 20) + 5))
    script = root / "sub" / "run"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    owner_only = root / "sub" / "owner-exec"
    owner_only.write_text("x")
    owner_only.chmod(0o700)
    group_only = root / "sub" / "group-exec"  # Nix looks at the owner's bit only
    group_only.write_text("y")
    group_only.chmod(0o654)
    (root / "sub" / "deeper" / "deepest" / "file").write_text("deep")
    (root / "link").symlink_to("sub/run")
    (root / "abs-link").symlink_to("/etc/hostname")
    (root / "dangling").symlink_to("does/not/exist")
    (root / "sub" / "dir-link").symlink_to("deeper")
    return root


def test_dump_equals_nix_store_dump(tree: Path) -> None:
    expected = nix_dump(tree)
    assert ours(tree) == expected
    assert ours(tree, chunk_size=4096) == expected
    assert ours(tree, chunk_size=7) == expected


def test_single_file_and_symlink_roots(tree: Path) -> None:
    for path in [tree / "nine", tree / "empty", tree / "sub" / "run", tree / "link"]:
        assert ours(path) == nix_dump(path), path


def test_chunks_stay_small(tree: Path) -> None:
    sizes = [len(chunk) for chunk in nar.dump(tree, chunk_size=65536)]
    assert sum(sizes) > 3 << 20
    assert max(sizes) < 2 * 65536


def test_added_store_path_matches_what_nix_records(tree: Path) -> None:
    store_path = nix("nix-store", "--add", str(tree)).strip()
    expected = nix_dump(store_path)
    assert ours(store_path) == expected
    assert ours(tree) == expected  # the store keeps nothing a NAR carries but exec bits
    digest, size = nar.hash_path(Path(store_path))
    assert digest == parse_hash(nix("nix-store", "--query", "--hash", store_path).strip())
    assert size == int(nix("nix-store", "--query", "--size", store_path))


def test_built_store_paths_match_nix_path_info(
    nix_path_info: dict[str, dict[str, object]],
) -> None:
    assert len(nix_path_info) == 3  # probe-top, probe-dep, busybox
    for path, info in nix_path_info.items():
        digest, size = nar.hash_path(Path(path))
        assert digest == parse_hash(str(info["narHash"])), path
        assert size == info["narSize"], path


def test_hasher_accumulates() -> None:
    hasher = nar.NarHasher()
    for chunk in [b"ab", b"", b"cd"]:
        hasher.update(chunk)
    assert hasher.size == 4
    assert hasher.digest() == __import__("hashlib").sha256(b"abcd").digest()


def test_refuses_special_files(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(InvalidInput, match="neither"):
        ours(tmp_path)


# Reading NARs back.


def feed_in_pieces(data: bytes, size: int) -> nar.NarValidator:
    validator = nar.NarValidator()
    for start in range(0, len(data), size):
        validator.feed(data[start : start + size])
    validator.finish()
    return validator


def test_listing_equals_the_one_nix_writes(probe_top: str) -> None:
    expected = json.loads((FIXTURES / "probe-top.ls").read_text())
    data = nix_dump(probe_top)
    assert nar.list_nar([data]) == expected
    assert render_listing(nar.list_nar([data])) == (FIXTURES / "probe-top.ls").read_text()
    for size in [1, 7, 4096]:
        assert feed_in_pieces(data, size).listing == expected


def test_listing_of_a_fresh_cache(probe_top: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    nix(
        "nix",
        *NIX_COMMAND,
        "copy",
        "--to",
        f"file://{cache}?write-nar-listing=true&compression=none",
        probe_top,
    )
    listings = sorted(cache.glob("*.ls"))
    assert len(listings) == 3
    for listing in listings:
        narinfo = (cache / listing.name.replace(".ls", ".narinfo")).read_text()
        path = narinfo.split("\n")[0].removeprefix("StorePath: ")
        assert nar.render_listing(nar.list_nar(nar.dump(Path(path), 1000))) == listing.read_text()


def test_validator_accepts_what_it_writes(tree: Path) -> None:
    data = ours(tree)
    validator = feed_in_pieces(data, 100_003)
    assert validator.size == len(data)
    root = validator.listing["root"]
    assert root["entries"]["sub"]["entries"]["run"]["executable"] is True
    assert "executable" not in root["entries"]["sub"]["entries"]["group-exec"]
    assert root["entries"]["link"] == {"type": "symlink", "target": "sub/run"}
    big = root["entries"]["big"]
    assert data[big["narOffset"] : big["narOffset"] + big["size"]] == (tree / "big").read_bytes()


def s(data: bytes) -> bytes:
    return len(data).to_bytes(8, "little") + data + bytes(-len(data) % 8)


def archive(*tokens: bytes) -> bytes:
    return b"".join(s(token) for token in tokens)


GOOD_FILE = archive(b"nix-archive-1", b"(", b"type", b"regular", b"contents", b"hi", b")")


def directory(*names: bytes) -> bytes:
    body = b"".join(
        archive(b"entry", b"(", b"name", name, b"node", b"(", b"type", b"symlink")
        + archive(b"target", b"x", b")", b")")
        for name in names
    )
    return archive(b"nix-archive-1", b"(", b"type", b"directory") + body + s(b")")


def test_hand_written_nars_parse() -> None:
    assert nar.list_nar([GOOD_FILE])["root"] == {"type": "regular", "size": 2, "narOffset": 96}
    assert set(nar.list_nar([directory(b"a", b"b")])["root"]["entries"]) == {"a", "b"}


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "ends early"),
        (GOOD_FILE[:-1], "ends early"),
        (GOOD_FILE + b"x", "follows the end"),
        (archive(b"nix-archive-2"), "expected 'nix-archive-1'"),
        (GOOD_FILE.replace(b"hi" + bytes(6), b"hi\0\0\0\0\0\1"), "padding"),
        (archive(b"nix-archive-1", b"(", b"type", b"fifo"), "unknown node type"),
        (
            archive(b"nix-archive-1", b"(", b"type", b"regular", b"executable", b"1"),
            "executable marker",
        ),
        (directory(b"b", b"a"), "not sorted"),
        (directory(b"a", b"a"), "not sorted"),
        (directory(b".."), "invalid file name"),
        (directory(b"a/b"), "invalid file name"),
        ((1 << 40).to_bytes(8, "little"), "too long"),
    ],
)
def test_validator_rejects(data: bytes, problem: str) -> None:
    with pytest.raises(InvalidInput, match=problem):
        feed_in_pieces(data, 3)
