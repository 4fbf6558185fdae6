from __future__ import annotations

import base64
import hashlib

import pytest

from nixfarm.errors import InvalidInput
from nixfarm.nix import nix32
from nixfarm.nix.hashes import format_hash, normalise_hash, parse_hash
from tests.nix.conftest import NIX_COMMAND, nix

DIGEST = hashlib.sha256(b"nixfarm").digest()


def test_accepts_every_spelling_nix_prints() -> None:
    sri = nix("nix", *NIX_COMMAND, "hash", "to-sri", "--type", "sha256", DIGEST.hex()).strip()
    base32 = nix("nix", *NIX_COMMAND, "hash", "to-base32", "--type", "sha256", DIGEST.hex())
    spellings = [
        sri,
        "sha256:" + base32.strip(),
        "sha256:" + DIGEST.hex(),
        "sha256:" + base64.b64encode(DIGEST).decode(),
    ]
    assert sri.startswith("sha256-")
    for spelling in spellings:
        assert parse_hash(spelling) == DIGEST, spelling
        assert normalise_hash(spelling) == "sha256:" + base32.strip()


def test_format_is_nix32_with_prefix() -> None:
    assert format_hash(DIGEST) == "sha256:" + nix32.encode(DIGEST)
    assert format_hash(hashlib.sha1().digest(), "sha1") == "sha1:" + nix32.encode(
        hashlib.sha1().digest()
    )
    with pytest.raises(InvalidInput):
        format_hash(b"short")


def test_other_algorithms() -> None:
    digest = hashlib.sha512(b"x").digest()
    assert parse_hash("sha512:" + digest.hex(), "sha512") == digest
    assert parse_hash("sha512-" + base64.b64encode(digest).decode(), "sha512") == digest


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (DIGEST.hex(), "does not start with"),
        ("md5:" + DIGEST.hex(), "'md5' hash, expected sha256"),
        ("sha256:" + DIGEST.hex()[:-2], "wrong length"),
        ("sha256:" + "z" * 64, "hex part"),
        ("sha256:" + "e" * 52, "not valid nix32"),
        ("sha256-" + base64.b64encode(DIGEST[:20]).decode(), "has 20 bytes"),
        ("sha256-!!!!", "base64 part"),
        ("", "does not start with"),
    ],
)
def test_rejects_malformed_hashes(text: str, problem: str) -> None:
    with pytest.raises(InvalidInput, match=problem) as caught:
        parse_hash(text)
    assert caught.value.field == "hash"


def test_rejects_unknown_algorithm() -> None:
    with pytest.raises(InvalidInput, match="not a hash algorithm"):
        parse_hash("blake3:abc", "blake3")
