"""Binary cache signing keys, in the format of ``nix-store --generate-binary-cache-key``.

Nix's keys are Ed25519 with a name in front: a secret key file holds
``<name>:<base64 of 64 bytes>`` (libsodium's secret key: the 32-byte seed followed by
the 32-byte public key), a public key ``<name>:<base64 of 32 bytes>``, and a signature
``<name>:<base64 of 64 bytes>``. The name says which key made a signature: a verifier
looks up a trusted key by name and checks nothing else, so a signature under an unknown
name is simply not trusted.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import nacl.exceptions
import nacl.signing

from nixfarm.errors import InvalidInput

_SECRET_SIZE = 64
_PUBLIC_SIZE = 32
_SIGNATURE_SIZE = 64


def _split(text: str, size: int, what: str) -> tuple[str, bytes]:
    name, colon, encoded = text.strip().partition(":")
    if not colon or not name:
        raise InvalidInput(f"A {what} must look like 'name:base64'.", what)
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"The base64 part of the {what} {name!r} is malformed.", what) from exc
    if len(raw) != size:
        raise InvalidInput(f"The {what} {name!r} has {len(raw)} bytes, not {size}.", what)
    return name, raw


def _join(name: str, raw: bytes) -> str:
    return f"{name}:{base64.b64encode(raw).decode()}"


@dataclass(frozen=True)
class PublicKey:
    name: str
    key: bytes

    @classmethod
    def parse(cls, text: str) -> PublicKey:
        return cls(*_split(text, _PUBLIC_SIZE, "public key"))

    def to_string(self) -> str:
        return _join(self.name, self.key)

    def verify(self, fingerprint: bytes, sig: str) -> bool:
        """Whether ``sig`` is this key's signature of ``fingerprint``."""
        try:
            name, raw = _split(sig, _SIGNATURE_SIZE, "signature")
        except InvalidInput:
            return False
        if name != self.name:
            return False
        try:
            nacl.signing.VerifyKey(self.key).verify(fingerprint, raw)
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError):
            return False
        return True


@dataclass(frozen=True)
class SecretKey:
    name: str
    key: bytes  # seed + public key, 64 bytes, as Nix stores it

    def __post_init__(self) -> None:
        if len(self.key) != _SECRET_SIZE:
            raise InvalidInput(f"A secret key has {_SECRET_SIZE} bytes.", "secret key")
        # A key whose second half is not the public key of its first would sign with
        # one key and advertise another.
        derived = bytes(nacl.signing.SigningKey(self.key[:32]).verify_key)
        if derived != self.key[32:]:
            raise InvalidInput(f"The secret key {self.name!r} is inconsistent.", "secret key")

    def __repr__(self) -> str:
        return f"SecretKey(name={self.name!r}, key=<secret>)"

    @classmethod
    def generate(cls, name: str) -> SecretKey:
        if not name or ":" in name:
            raise InvalidInput("A key name must be non-empty and have no ':'.", "name")
        signing_key = nacl.signing.SigningKey.generate()
        return cls(name, bytes(signing_key) + bytes(signing_key.verify_key))

    @classmethod
    def parse(cls, text: str) -> SecretKey:
        return cls(*_split(text, _SECRET_SIZE, "secret key"))

    def to_string(self) -> str:
        return _join(self.name, self.key)

    def public(self) -> PublicKey:
        return PublicKey(self.name, self.key[32:])

    def sign(self, fingerprint: bytes) -> str:
        """``name:base64sig``, the value of a narinfo ``Sig:`` line."""
        signature = nacl.signing.SigningKey(self.key[:32]).sign(fingerprint).signature
        return _join(self.name, signature)
