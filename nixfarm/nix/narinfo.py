"""narinfo files: what a binary cache says about one store path.

A narinfo is a list of ``Key: value`` lines. Nix writes the keys in a fixed order
(StorePath, URL, Compression, FileHash, FileSize, NarHash, NarSize, References,
Deriver, System, Sig..., CA), references and signatures sorted, and an empty reference
list as ``References: `` with its trailing space; :meth:`NarInfo.render` reproduces
that exactly. On input, like Nix, unknown keys are ignored (newer Nix versions add
some), ``Compression`` defaults to ``bzip2`` and ``Deriver: unknown-deriver`` means
none. Every known key is checked for its syntax (hashes, sizes, basenames, a CA that
Nix can read, signatures of 64 bytes) and a bad one is refused naming the key: a
cache must never serve a narinfo that Nix then fails on.

What a signature covers is not the file but the *fingerprint*
``1;<store path>;<nar hash>;<nar size>;<references as full paths, comma-joined>``:
URL, compression and file hash may change when a cache recompresses, the signature
stays valid.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

from nixfarm.errors import InvalidInput
from nixfarm.nix.hashes import DIGEST_SIZES, normalise_hash, parse_hash
from nixfarm.nix.storepath import STORE_DIR, StorePath

_SINGLE_KEYS = frozenset(
    {
        "StorePath", "URL", "Compression", "FileHash", "FileSize", "NarHash", "NarSize",
        "References", "Deriver", "System", "CA",
    }
)  # fmt: skip


_SIGNATURE_BYTES = 64


def _bad(key: str, reason: str) -> InvalidInput:
    return InvalidInput(f"narinfo field {key} {reason}.", key)


def _size(key: str, value: str) -> int:
    if not value.isdigit() or not value.isascii():
        raise _bad(key, f"is not a byte count: {value!r}")
    return int(value)


def _hash(key: str, value: str) -> str:
    try:
        return normalise_hash(value)
    except InvalidInput as exc:
        raise _bad(key, f"is not a sha256 hash ({exc})") from exc


def check_content_address(value: str) -> str:
    """``value`` if it is a content address as Nix writes one (a narinfo's ``CA``);
    InvalidInput otherwise (a newline in it, for one, would add lines to a narinfo)."""
    return _content_address(value)


def _content_address(value: str) -> str:
    # What Nix writes: text:sha256:<hash> (a derivation or text file) or
    # fixed:[r:]<algo>:<hash> (a fixed-output path, r: for recursive); Nix reads the
    # hash in base16, nix32 or base64, told apart by length.
    kind, _, rest = value.partition(":")
    algos: tuple[str, ...]
    if kind == "text":
        algos = ("sha256",)
    elif kind == "fixed":
        rest = rest.removeprefix("r:")
        algos = tuple(DIGEST_SIZES)
    else:
        raise _bad("CA", f"is not a content address (text:sha256:HASH or "
                         f"fixed:[r:]ALGO:HASH): {value!r}")
    algo = rest.partition(":")[0]
    if algo not in algos:
        raise _bad("CA", f"names hash algorithm {algo!r}; expected {' or '.join(algos)}: "
                         f"{value!r}")
    try:
        parse_hash(rest, algo)
    except InvalidInput as exc:
        raise _bad("CA", f"holds a malformed {algo} hash ({exc}): {value!r}") from exc
    return value


def _signature(value: str) -> str:
    name, sep, body = value.partition(":")
    if not sep or not name or any(c.isspace() for c in name):
        raise _bad("Sig", f"is not KEYNAME:BASE64SIGNATURE: {value!r}")
    try:
        signature = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise _bad("Sig", f"holds malformed base64: {value!r}") from None
    if len(signature) != _SIGNATURE_BYTES:
        raise _bad("Sig", f"holds {len(signature)} bytes, an Ed25519 signature has "
                          f"{_SIGNATURE_BYTES}: {value!r}")
    return value


def _no_space(key: str, value: str) -> str:
    if not value or any(c.isspace() for c in value):
        raise _bad(key, f"must be one word: {value!r}")
    return value


def _basename(key: str, value: str) -> str:
    try:
        path = StorePath.parse(value)
    except InvalidInput as exc:
        raise _bad(key, f"holds an invalid store path ({exc})") from exc
    if value != path.basename:
        raise _bad(key, f"must hold store path basenames, not {value!r}")
    return value


@dataclass
class NarInfo:
    store_path: StorePath
    url: str
    compression: str
    file_hash: str | None
    file_size: int | None
    nar_hash: str
    nar_size: int
    references: list[str]  # basenames
    deriver: str | None  # basename
    sigs: list[str] = field(default_factory=list)
    ca: str | None = None
    system: str | None = None

    def __post_init__(self) -> None:
        # Hashes are kept in the one spelling Nix writes, so that equal hashes compare
        # equal and the fingerprint is the one Nix signs.
        self.nar_hash = _hash("NarHash", self.nar_hash)
        if self.file_hash is not None:
            self.file_hash = _hash("FileHash", self.file_hash)

    @classmethod
    def parse(cls, text: str) -> NarInfo:
        """Parse a narinfo file; raise InvalidInput naming the offending key."""
        values: dict[str, str] = {}
        sigs: list[str] = []
        for number, line in enumerate(text.split("\n"), start=1):
            if not line:
                continue
            key, sep, value = line.partition(": ")
            if not sep:
                if line.endswith(":"):  # "References:" with the space stripped
                    key, value = line[:-1], ""
                else:
                    raise InvalidInput(f"narinfo line {number} is not 'Key: value'.", "narinfo")
            if key == "Sig":
                if value not in sigs:
                    sigs.append(_signature(value))
            elif key in _SINGLE_KEYS:
                if key in values:
                    raise _bad(key, "appears twice")
                values[key] = value
        for key in ("StorePath", "URL", "NarHash", "NarSize"):
            if not values.get(key):
                raise _bad(key, "is missing")
        try:
            store_path = StorePath.parse(values["StorePath"])
        except InvalidInput as exc:
            raise _bad("StorePath", f"is invalid ({exc})") from exc
        if store_path.path != values["StorePath"]:
            raise _bad("StorePath", f"is not a path in {STORE_DIR}")
        nar_size = _size("NarSize", values["NarSize"])
        if nar_size == 0:
            raise _bad("NarSize", "is zero")
        deriver = values.get("Deriver")
        if deriver == "unknown-deriver" or not deriver:
            deriver = None
        else:
            deriver = _basename("Deriver", deriver)
            if not deriver.endswith(".drv"):
                raise _bad("Deriver", f"must name a derivation (<hash>-<name>.drv), not "
                                      f"{deriver!r}")
        ca = values.get("CA") or None
        if ca is not None:
            _content_address(ca)
        if values.get("System"):
            _no_space("System", values["System"])
        return cls(
            store_path=store_path,
            url=_no_space("URL", values["URL"]),
            compression=_no_space("Compression", values.get("Compression") or "bzip2"),
            file_hash=values["FileHash"] if values.get("FileHash") else None,
            file_size=_size("FileSize", values["FileSize"]) if "FileSize" in values else None,
            nar_hash=values["NarHash"],
            nar_size=nar_size,
            references=[_basename("References", ref) for ref in values["References"].split()]
            if "References" in values
            else [],
            deriver=deriver,
            sigs=sigs,
            ca=ca,
            system=values.get("System") or None,
        )

    def render(self) -> str:
        """The narinfo text, byte for byte as Nix would write it."""
        lines = [
            f"StorePath: {self.store_path.path}",
            f"URL: {self.url}",
            f"Compression: {self.compression}",
        ]
        if self.file_hash is not None:
            lines.append(f"FileHash: {self.file_hash}")
        if self.file_size is not None:
            lines.append(f"FileSize: {self.file_size}")
        lines.append(f"NarHash: {self.nar_hash}")
        lines.append(f"NarSize: {self.nar_size}")
        lines.append("References: " + " ".join(sorted(set(self.references))))
        if self.deriver:
            lines.append(f"Deriver: {self.deriver}")
        if self.system:
            lines.append(f"System: {self.system}")
        lines.extend(f"Sig: {sig}" for sig in sorted(set(self.sigs)))
        if self.ca:
            lines.append(f"CA: {self.ca}")
        return "\n".join(lines) + "\n"

    @property
    def reference_paths(self) -> list[str]:
        """References as full store paths, sorted as Nix sorts them."""
        return [f"{STORE_DIR}/{ref}" for ref in sorted(set(self.references))]

    def fingerprint(self) -> bytes:
        """The bytes a cache signature signs."""
        return fingerprint(self.store_path.path, self.nar_hash, self.nar_size, self.reference_paths)


def fingerprint(path: str, nar_hash: str, nar_size: int, references: list[str]) -> bytes:
    """``1;<path>;<sha256:nix32>;<size>;<sorted full reference paths>``, as Nix signs it."""
    if nar_size <= 0:
        raise InvalidInput(f"Cannot fingerprint {path}: its NAR size is unknown.", "NarSize")
    refs = ",".join(sorted(set(references)))
    return f"1;{path};{normalise_hash(nar_hash)};{nar_size};{refs}".encode()
