"""OCI content digests: ``sha256:<64 lowercase hex>``.

Every blob and manifest in a registry is named by the digest of its bytes. The
distribution spec allows other algorithms, but every client in use speaks sha256 and
nixfarm only ever produces sha256, so anything else is rejected at the door: a digest
that reaches storage keys or URLs is known to be exactly 71 safe characters.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Protocol

from nixfarm.errors import IntegrityError, InvalidInput

ALGORITHM = "sha256"
_HEX = re.compile(r"[0-9a-f]{64}")


class _Hasher(Protocol):
    """What ``hashlib.sha256()`` returns (its type is private to hashlib)."""

    @property
    def name(self) -> str: ...

    def hexdigest(self) -> str: ...


@dataclass(frozen=True, order=True)
class Digest:
    """A sha256 content digest; ``str(d)`` is the wire form ``sha256:<hex>``."""

    hex: str

    def __post_init__(self) -> None:
        if not _HEX.fullmatch(self.hex):
            raise InvalidInput(
                f"Digest hex {self.hex!r} is not 64 lowercase hexadecimal characters.",
                "digest",
            )

    @property
    def algorithm(self) -> str:
        return ALGORITHM

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse ``sha256:<hex>``; raise InvalidInput for anything else."""
        algorithm, colon, encoded = text.partition(":")
        if not colon:
            raise InvalidInput(f"Digest {text[:100]!r} has no algorithm prefix.", "digest")
        if algorithm != ALGORITHM:
            raise InvalidInput(
                f"Digest algorithm {algorithm[:20]!r} is not supported, only sha256 is.",
                "digest",
            )
        if not _HEX.fullmatch(encoded):
            raise InvalidInput(
                f"Digest {text[:100]!r} is not sha256 followed by 64 lowercase hex digits.",
                "digest",
            )
        return cls(encoded)

    @classmethod
    def of(cls, data: bytes | bytearray | memoryview) -> Digest:
        """The digest of ``data`` (for small documents: manifests, configs)."""
        return cls(hashlib.sha256(data).hexdigest())

    @classmethod
    def from_hasher(cls, hasher: _Hasher) -> Digest:
        """The digest a running ``hashlib.sha256()`` object has reached."""
        if hasher.name != ALGORITHM:
            raise InvalidInput(f"A {hasher.name} hasher cannot make a sha256 digest.", "digest")
        return cls(hasher.hexdigest())

    def verify(self, data: bytes | bytearray | memoryview) -> None:
        """Raise IntegrityError unless ``data`` has this digest."""
        actual = Digest.of(data)
        if actual != self:
            raise IntegrityError(
                f"Content has digest {actual}, expected {self}.",
                "digest",
                expected=str(self),
                actual=str(actual),
            )

    def __str__(self) -> str:
        return f"{ALGORITHM}:{self.hex}"

    @property
    def short(self) -> str:
        """The first 12 hex digits, for logs and directory names people read."""
        return self.hex[:12]
