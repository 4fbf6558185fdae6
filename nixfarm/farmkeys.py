"""The keys all servers of a farm share, and the check that they really do.

Two keys must be the same on every server: the secrets key (job secrets are sealed
with it, webhooks signed) and the registry token key (a pull token minted by one server
is checked by another). Each is configuration (``[keys]``: base64, or a file; by default
a file in the data directory). The database keeps each key's fingerprint, never the
key, so a server that starts with a different key — or none — refuses to start and says
which, instead of making a key of its own and then failing to open secrets sealed by
the others or refusing their pull tokens.

The first server of a farm, finding no fingerprint, makes a key file when none is
configured (``keyfile.read_or_create``: servers starting at once agree on one) and
records its fingerprint; whichever server records first wins, and the others compare.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from nixfarm.config import Settings
from nixfarm.db.engine import Database
from nixfarm.db.models import FarmKey
from nixfarm.db.upsert import insert
from nixfarm.errors import ConfigError
from nixfarm.keyfile import read_or_create

KEY_BYTES = 32
SECRETS = "secrets"
REGISTRY_TOKEN = "registry_token"
#: The default file of each key, in the data directory.
DEFAULT_FILES = {SECRETS: "secrets.key", REGISTRY_TOKEN: "registry-token.key"}


@dataclass(frozen=True)
class FarmKeys:
    secrets: bytes
    registry_token: bytes


def fingerprint(name: str, key: bytes) -> str:
    return hashlib.sha256(f"nixfarm farm key {name}\0".encode() + key).hexdigest()


def _configured(settings: Settings, name: str) -> tuple[bytes | None, Path]:
    """The key given inline (or None), and the key's file."""
    inline: str = getattr(settings.keys, name)
    given_file: str = getattr(settings.keys, f"{name}_file")
    path = Path(given_file) if given_file else settings.data_dir / DEFAULT_FILES[name]
    if not inline:
        return None, path
    try:
        key = base64.b64decode(inline, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"keys.{name} is not base64", key=f"keys.{name}") from None
    if len(key) != KEY_BYTES:
        raise ConfigError(f"keys.{name} must be {KEY_BYTES} bytes (base64), not {len(key)}",
                          key=f"keys.{name}")
    return key, path


async def _recorded(db: Database, name: str) -> str | None:
    async with db.session() as s:
        found: str | None = await s.scalar(
            sa.select(FarmKey.fingerprint).where(FarmKey.name == name))
        return found


async def _key(settings: Settings, db: Database, name: str) -> bytes:
    inline, path = _configured(settings, name)
    where = f"keys.{name}" if inline is not None else str(path)
    recorded = await _recorded(db, name)
    if inline is not None:
        key = inline
    elif recorded is None:
        key = read_or_create(path, KEY_BYTES)  # the farm's first server makes it
    else:
        try:
            key = path.read_bytes()
        except FileNotFoundError:
            raise ConfigError(
                f"this farm's {name.replace('_', ' ')} key (fingerprint {recorded[:16]}) is "
                f"not at {path}: copy it there from a server of the farm, or set "
                f"keys.{name} or keys.{name}_file", key=f"keys.{name}") from None
    if len(key) != KEY_BYTES:
        raise ConfigError(f"{where} is not a {KEY_BYTES}-byte key", key=f"keys.{name}")
    mine = fingerprint(name, key)
    if recorded is None:
        async with db.session() as s:
            await s.execute(insert(s, FarmKey).values(name=name, fingerprint=mine)
                            .on_conflict_do_nothing(index_elements=["name"]))
        recorded = await _recorded(db, name)  # another server may have recorded first
    if recorded != mine:
        raise ConfigError(
            f"the {name.replace('_', ' ')} key in {where} (fingerprint {mine[:16]}) is not "
            f"this farm's ({(recorded or '')[:16]}): every server of a farm needs the same "
            f"key; copy it from a server of the farm", key=f"keys.{name}")
    return key


async def load(settings: Settings, db: Database) -> FarmKeys:
    """The farm's keys, checked against the fingerprints the database keeps."""
    return FarmKeys(secrets=await _key(settings, db, SECRETS),
                    registry_token=await _key(settings, db, REGISTRY_TOKEN))
