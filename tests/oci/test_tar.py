"""Tar headers, checked by GNU tar and Python's tarfile reading them back."""

from __future__ import annotations

import io
import subprocess
import tarfile

import pytest

from nixfarm.oci import tar

NAMES = [
    b"short",
    b"x" * 100,  # exactly fills the name field
    b"p" * 150 + b"/" + b"n" * 100,  # 251 bytes: prefix and name split
    b"p" * 155 + b"/" + b"n" * 100,  # 256 bytes: the longest a split can hold
    b"p" * 156 + b"/" + b"n",  # prefix one byte too long: PAX
    b"p" * 10 + b"/" + b"n" * 101,  # last part too long: PAX
    b"q" * 400,  # no slash at all: PAX
]


def archive(entries: list[bytes]) -> bytes:
    out = b"".join(entries)
    return out + tar.end_padding(len(out))


@pytest.mark.parametrize("name", NAMES)
def test_names_round_trip(name: bytes) -> None:
    data = b"content"
    blob = archive([tar.header(name, 0o444, len(data), tar.REGULAR), data, tar.padding(len(data))])
    assert len(blob) % tar.RECORD == 0
    uses_pax = len(tar.header(name, 0o444, 1, tar.REGULAR)) > tar.BLOCK
    assert uses_pax == (name in NAMES[4:])
    listing = subprocess.run(["tar", "-tvf", "-"], input=blob, capture_output=True, check=True)
    assert listing.stdout.split()[-1] == name
    with tarfile.open(fileobj=io.BytesIO(blob)) as archive_file:
        (member,) = archive_file.getmembers()
        assert member.name == name.decode()
        extracted = archive_file.extractfile(member)
        assert extracted is not None and extracted.read() == data


def test_directory_names_keep_their_slash_when_split() -> None:
    name = b"p" * 140 + b"/" + b"d" * 20 + b"/"
    blob = archive([tar.header(name, 0o555, 0, tar.DIRECTORY)])
    with tarfile.open(fileobj=io.BytesIO(blob)) as archive_file:
        (member,) = archive_file.getmembers()
    assert member.isdir() and member.name == name.decode().rstrip("/")


def test_long_link_targets_and_huge_sizes_use_pax_records() -> None:
    target = b"/nix/store/" + b"t" * 200
    blob = archive([tar.header(b"link", 0o777, 0, tar.SYMLINK, target)])
    with tarfile.open(fileobj=io.BytesIO(blob)) as archive_file:
        (member,) = archive_file.getmembers()
    assert member.issym() and member.linkname == target.decode()
    # Only the header is written: the reader must see the PAX size.
    huge = 10 * 1024**3
    with tarfile.open(fileobj=io.BytesIO(tar.header(b"big", 0o444, huge, tar.REGULAR))) as tf:
        huge_member = tf.next()
        assert huge_member is not None and huge_member.size == huge


def test_header_checksum_and_fields_are_what_gnu_tar_writes() -> None:
    block = tar.header(b"etc/passwd", 0o644, 12, tar.REGULAR)
    assert len(block) == tar.BLOCK
    assert block[257:265] == b"ustar\x0000"
    assert int(block[148:154], 8) == sum(block[:148]) + 8 * 32 + sum(block[156:])
    assert block[100:108] == b"0000644\0"
    assert block[136:148] == b"00000000001\0"  # mtime 1
