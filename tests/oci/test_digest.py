from __future__ import annotations

import hashlib

import pytest

from nixfarm.errors import IntegrityError, InvalidInput
from nixfarm.oci.digest import Digest

EMPTY = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_of_matches_sha256sum_of_the_bytes() -> None:
    assert str(Digest.of(b"")) == EMPTY
    assert Digest.of(b"abc").hex == hashlib.sha256(b"abc").hexdigest()


def test_parse_round_trips_and_compares_by_value() -> None:
    digest = Digest.parse(EMPTY)
    assert str(digest) == EMPTY
    assert digest == Digest.of(b"")
    assert digest.algorithm == "sha256"
    assert digest.short == "e3b0c44298fc"
    assert len({digest, Digest.parse(EMPTY)}) == 1


@pytest.mark.parametrize(
    "text",
    [
        "",
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "sha512:" + "0" * 128,
        "sha256:" + "0" * 63,
        "sha256:" + "0" * 65,
        "sha256:" + "E" * 64,
        "sha256:" + "g" * 64,
        "sha256:../../../../etc/passwd",
        "SHA256:" + "0" * 64,
        "sha256:" + "0" * 64 + "\n",
    ],
)
def test_parse_rejects_anything_but_sha256_lowercase_hex(text: str) -> None:
    with pytest.raises(InvalidInput) as info:
        Digest.parse(text)
    assert info.value.field == "digest"


def test_constructor_validates_too() -> None:
    with pytest.raises(InvalidInput):
        Digest("xyz")


def test_from_hasher_reads_a_running_hash() -> None:
    hasher = hashlib.sha256()
    hasher.update(b"a")
    hasher.update(b"bc")
    assert Digest.from_hasher(hasher) == Digest.of(b"abc")
    with pytest.raises(InvalidInput):
        Digest.from_hasher(hashlib.sha1())


def test_verify_raises_integrity_error_with_both_digests() -> None:
    Digest.of(b"abc").verify(b"abc")
    with pytest.raises(IntegrityError) as info:
        Digest.of(b"abc").verify(b"abd")
    assert info.value.expected == str(Digest.of(b"abc"))
    assert info.value.actual == str(Digest.of(b"abd"))
