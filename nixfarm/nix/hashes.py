"""Parsing and printing of Nix hashes.

Nix prints the same digest in several spellings and accepts all of them on input:
``sha256:<nix32>`` (what narinfo files and ``nix-store -q --hash`` use),
``sha256:<hex>``, ``sha256:<base64>`` and SRI ``sha256-<base64>`` (what ``nix path-info
--json`` prints since 2.4). The spelling is told apart by its length, which is fixed
for each algorithm. Everything inside nixfarm keeps digests as bytes and prints the
canonical ``<algo>:<nix32>`` form, so that two spellings of one hash compare equal.
"""

from __future__ import annotations

import base64
import binascii

from nixfarm.errors import InvalidInput
from nixfarm.nix import nix32

DIGEST_SIZES = {"md5": 16, "sha1": 20, "sha256": 32, "sha512": 64}


def _digest_size(algo: str) -> int:
    size = DIGEST_SIZES.get(algo)
    if size is None:
        raise InvalidInput(f"{algo!r} is not a hash algorithm Nix knows.", "hash")
    return size


def _decode_base64(body: str, text: str) -> bytes:
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"The base64 part of hash {text!r} is malformed.", "hash") from exc


def parse_hash(text: str, algo: str = "sha256") -> bytes:
    """Return the digest bytes of ``text``, which must be an ``algo`` hash.

    Accepts ``algo:<nix32>``, ``algo:<hex>``, ``algo:<base64>`` and ``algo-<base64>``.
    """
    size = _digest_size(algo)
    if text.startswith(algo + "-"):
        digest = _decode_base64(text[len(algo) + 1 :], text)
        if len(digest) != size:
            raise InvalidInput(f"Hash {text!r} has {len(digest)} bytes, {algo} has {size}.", "hash")
        return digest
    prefix, colon, body = text.partition(":")
    if not colon:
        raise InvalidInput(f"Hash {text!r} does not start with '{algo}:' or '{algo}-'.", "hash")
    if prefix != algo:
        raise InvalidInput(f"Hash {text!r} is a {prefix!r} hash, expected {algo}.", "hash")
    if len(body) == size * 2:
        try:
            return bytes.fromhex(body)
        except ValueError as exc:
            raise InvalidInput(f"The hex part of hash {text!r} is malformed.", "hash") from exc
    if len(body) == nix32.encoded_length(size):
        try:
            return nix32.decode(body)
        except InvalidInput as exc:
            raise InvalidInput(f"Hash {text!r} is not valid nix32: {exc}", "hash") from exc
    if len(body) == len(base64.b64encode(bytes(size))):
        return _decode_base64(body, text)
    raise InvalidInput(f"Hash {text!r} has the wrong length for {algo}.", "hash")


def format_hash(digest: bytes, algo: str = "sha256") -> str:
    """The canonical spelling ``<algo>:<nix32>``, as Nix writes it in narinfo files."""
    if len(digest) != _digest_size(algo):
        raise InvalidInput(f"A {algo} digest has {_digest_size(algo)} bytes.", "hash")
    return f"{algo}:{nix32.encode(digest)}"


def normalise_hash(text: str, algo: str = "sha256") -> str:
    """Any accepted spelling of an ``algo`` hash, rewritten as ``<algo>:<nix32>``."""
    return format_hash(parse_hash(text, algo), algo)
