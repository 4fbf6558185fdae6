"""Store paths: ``/nix/store/<hash>-<name>``.

The hash part is 32 nix32 characters (160 bits, a truncated sha256 of how the path was
made); the name is what a person reads. Nix refuses names that could escape the store
or confuse a shell or a URL: only ``[A-Za-z0-9+-._?=]``, not starting with ``.`` (which
also rules out ``.`` and ``..``), at most 211 characters (so a basename stays under
255 bytes with room for suffixes like ``.drv`` and ``.lock``). Paths arrive from
clients in URLs and narinfo files, so everything is checked before it is used to
build a file name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nixfarm.errors import InvalidInput
from nixfarm.nix.nix32 import ALPHABET

STORE_DIR = "/nix/store"
HASH_LENGTH = 32
MAX_NAME_LENGTH = 211

_HASH_RE = re.compile(f"[{ALPHABET}]{{{HASH_LENGTH}}}")
_NAME_RE = re.compile(r"[A-Za-z0-9+\-._?=]+")
#: A derivation's basename, ``<hash>-<name>.drv``: what build logs are filed under.
DRV_BASENAME = re.compile(f"[{ALPHABET}]{{{HASH_LENGTH}}}-[A-Za-z0-9+._?=-]+\\.drv")


def is_hash_part(text: str) -> bool:
    """Whether ``text`` is a well-formed store path hash part."""
    return _HASH_RE.fullmatch(text) is not None


def check_name(name: str) -> None:
    """Raise InvalidInput unless ``name`` is a name Nix allows in a store path."""
    if not name:
        raise InvalidInput("A store path name must not be empty.", "name")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidInput(f"A store path name has at most {MAX_NAME_LENGTH} characters.", "name")
    if name.startswith("."):
        raise InvalidInput(f"Store path name {name!r} must not start with a dot.", "name")
    if _NAME_RE.fullmatch(name) is None:
        raise InvalidInput(f"Store path name {name!r} has characters Nix forbids.", "name")


@dataclass(frozen=True, order=True)
class StorePath:
    """A validated store path; ordering is by basename, as Nix sorts path sets."""

    hash_part: str
    name: str

    def __post_init__(self) -> None:
        if not is_hash_part(self.hash_part):
            raise InvalidInput(
                f"{self.hash_part!r} is not a store path hash (32 nix32 characters).",
                "store_path",
            )
        check_name(self.name)

    @property
    def basename(self) -> str:
        return f"{self.hash_part}-{self.name}"

    @property
    def path(self) -> str:
        return f"{STORE_DIR}/{self.basename}"

    def __str__(self) -> str:
        return self.path

    @classmethod
    def parse(cls, text: str) -> StorePath:
        """Parse ``/nix/store/<hash>-<name>`` or a bare ``<hash>-<name>``."""
        basename = text
        if text.startswith(STORE_DIR + "/"):
            basename = text[len(STORE_DIR) + 1 :]
        if "/" in basename:
            raise InvalidInput(f"{text!r} is not a store path.", "store_path")
        if len(basename) < HASH_LENGTH + 2 or basename[HASH_LENGTH] != "-":
            raise InvalidInput(f"{text!r} is not a store path.", "store_path")
        try:
            return cls(basename[:HASH_LENGTH], basename[HASH_LENGTH + 1 :])
        except InvalidInput as exc:
            raise InvalidInput(f"{text!r} is not a valid store path: {exc}", "store_path") from exc
