"""Job secrets: SSH keys, PGP keys and files, encrypted at rest with the server's key.

The server key is 32 random bytes every server of the farm shares (``[keys] secrets``,
by default ``DATA_DIR/secrets.key``, mode 0600; nixfarm/farmkeys.py checks that they
do). Each secret's value is sealed with NaCl's SecretBox (XSalsa20-Poly1305, random
nonce): a copied database without the key reveals names, never values.

A secret belongs to the token that created it; a job may use its owner's secrets (an
admin's job may use any), named in the manifest by UUID or by name and resolved at
submit time. Values leave the server only in the claim answer to the runner running
that job, and every log chunk of the job has them masked (``masker``).

The same key also derives each owner's webhook signing key (``webhook_key``), so a
receiver can verify that a webhook came from this server on behalf of that owner.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import posixpath
import uuid as uuidlib
from collections.abc import Sequence

import nacl.exceptions
import nacl.secret
import nacl.utils
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from nixfarm.db.engine import Database
from nixfarm.db.models import Secret
from nixfarm.errors import ConfigError, Conflict, InvalidInput, NotFound
from nixfarm.masking import Masker
from nixfarm.scopes import ADMIN
from nixfarm.tokens import Principal
from nixfarm.wire.jobs import SecretCreate, SecretOut
from nixfarm.wire.runners import SecretValue

MAX_SECRET_BYTES = 1024 * 1024


def _out(secret: Secret) -> SecretOut:
    return SecretOut(uuid=secret.uuid, name=secret.name, kind=secret.kind,
                     path=secret.path, mode=secret.mode, created_at=secret.created_at)


def _check_placement(body: SecretCreate) -> tuple[str | None, int | None]:
    if body.kind != "file":
        if body.path is not None or body.mode is not None:
            raise InvalidInput("Only file secrets take a path and a mode.", field="path")
        return None, None
    path = body.path
    if not path or "\0" in path or not (path.startswith("/") or path.startswith("~/")):
        raise InvalidInput("A file secret needs a path, absolute or starting with ~/.",
                           field="path")
    if posixpath.basename(path) in ("", ".", ".."):
        raise InvalidInput(f"The path {path!r} must name a file.", field="path")
    mode = 0o600 if body.mode is None else body.mode
    if not 0 <= mode <= 0o7777:
        raise InvalidInput(f"The mode {mode:o} is not a file mode.", field="mode")
    return path, mode


class SecretService:
    def __init__(self, db: Database, key: bytes) -> None:
        self.db = db
        self._key = key
        self._box = nacl.secret.SecretBox(self._key)

    def job_key(self, job_id: int) -> str:
        """The capability that reads unlisted job ``job_id`` (``?key=`` in its URLs):
        128 bits no one can guess, and nothing to store (the farm's key makes it)."""
        digest = hmac.new(self._key, b"job:%d" % job_id, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:16]).decode().rstrip("=")

    def webhook_key(self, owner_id: int) -> bytes:
        """The HMAC key webhooks of ``owner_id``'s jobs are signed with."""
        return hmac.new(self._key, b"webhook:%d" % owner_id, hashlib.sha256).digest()

    def signing_key(self, purpose: str) -> bytes:
        """An HMAC key for ``purpose`` that every server of the farm derives alike (the
        web sign-in's OpenID Connect state cookie)."""
        return hmac.new(self._key, b"purpose:" + purpose.encode(), hashlib.sha256).digest()

    async def create(self, who: Principal, body: SecretCreate) -> SecretOut:
        try:
            data = base64.b64decode(body.data, validate=True)
        except binascii.Error:
            raise InvalidInput("The secret's data is not valid base64.", field="data") from None
        if len(data) > MAX_SECRET_BYTES:
            raise InvalidInput("A secret is at most 1 MiB.", field="data")
        path, mode = _check_placement(body)
        secret = Secret(uuid=str(uuidlib.uuid4()), owner_id=who.token_id, name=body.name,
                        kind=body.kind, path=path, mode=mode,
                        ciphertext=bytes(self._box.encrypt(data)))
        async with self.db.session() as s:
            taken = await s.scalar(sa.select(Secret.id).where(
                Secret.owner_id == who.token_id, Secret.name == body.name))
            if taken is not None:
                raise Conflict(f"You already have a secret named {body.name!r}.")
            s.add(secret)
        return _out(secret)

    async def all(self, who: Principal) -> list[SecretOut]:
        stmt = sa.select(Secret).order_by(Secret.id)
        if ADMIN not in who.scopes:
            stmt = stmt.where(Secret.owner_id == who.token_id)
        async with self.db.session() as s:
            return [_out(x) for x in await s.scalars(stmt)]

    async def delete(self, who: Principal, ident: str) -> SecretOut:
        async with self.db.session() as s:
            (secret,) = await self._find(s, who, [ident])
            await s.delete(secret)
        return _out(secret)

    async def resolve(self, who: Principal, idents: Sequence[str]) -> list[str]:
        """The UUIDs of the secrets a manifest names; ``InvalidInput`` naming a bad one."""
        if not idents:
            return []
        async with self.db.session() as s:
            return [x.uuid for x in await self._find(s, who, idents)]

    async def _find(self, s: AsyncSession, who: Principal,
                    idents: Sequence[str]) -> list[Secret]:
        found = []
        for index, ident in enumerate(idents):
            try:
                cond = Secret.uuid == str(uuidlib.UUID(ident))
            except ValueError:
                cond = Secret.name == ident
            stmt = sa.select(Secret).where(cond).order_by(Secret.id)
            if ADMIN not in who.scopes:
                stmt = stmt.where(Secret.owner_id == who.token_id)
            else:  # an admin's own secret of that name first
                stmt = stmt.order_by(Secret.owner_id != who.token_id, Secret.id)
            secret = (await s.scalars(stmt.limit(1))).first()
            if secret is None:
                raise NotFound(f"secrets[{index}]: there is no secret {ident!r} you may use.",
                               kind="secret", name=ident)
            found.append(secret)
        return found

    async def values(self, uuids: Sequence[str]) -> list[SecretValue]:
        """Decrypted secrets, in the order given (for the runner of a job)."""
        if not uuids:
            return []
        async with self.db.session() as s:
            rows = {x.uuid: x for x in await s.scalars(
                sa.select(Secret).where(Secret.uuid.in_(list(uuids))))}
        out = []
        for u in uuids:
            secret = rows.get(u)
            if secret is None:  # deleted since the job was submitted
                continue
            try:
                data = self._box.decrypt(secret.ciphertext)
            except nacl.exceptions.CryptoError:
                raise ConfigError(f"secret {u} cannot be decrypted: was secrets.key replaced?",
                                  key="data_dir") from None
            out.append(SecretValue(uuid=u, name=secret.name, kind=secret.kind,
                                   path=secret.path, mode=secret.mode,
                                   data=base64.b64encode(data).decode()))
        return out


def masker(values: Sequence[SecretValue]) -> Masker:
    """What hides these secrets in a job's log chunks.

    The rule (which values, which lines, how short is too short) belongs to
    ``nixfarm.masking``, so the server masks exactly what the runner does.
    """
    return Masker(base64.b64decode(value.data) for value in values)
