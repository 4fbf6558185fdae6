"""Secrets are encrypted at rest, resolved by UUID or name, and masked in logs."""

from __future__ import annotations

import base64

import pytest
import sqlalchemy as sa

from nixfarm.builds.secrets import masker
from nixfarm.db.engine import Database
from nixfarm.db.models import Secret
from nixfarm.errors import Conflict, InvalidInput, NotFound
from nixfarm.wire.jobs import JobSubmit, SecretCreate
from nixfarm.wire.runners import RunnerRegister
from tests.builds.conftest import MakeBuilds, principal

pytestmark = pytest.mark.anyio

VALUE = b"-----BEGIN KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n-----END KEY-----\n"


def body(name: str, **extra: object) -> SecretCreate:
    return SecretCreate.model_validate(
        {"name": name, "kind": "file", "data": base64.b64encode(VALUE).decode(),
         "path": "~/.key", **extra})


async def test_encrypted_at_rest_and_delivered(db: Database, make_builds: MakeBuilds) -> None:
    builds = make_builds()
    user = await principal(db, "user", "jobs:submit")
    created = await builds.secrets.create(user, body("deploy-key"))
    assert created.mode == 0o600
    async with db.session() as s:
        stored = await s.scalar(sa.select(Secret.ciphertext).where(Secret.uuid == created.uuid))
    assert stored is not None and b"c2VjcmV0" not in stored
    with pytest.raises(Conflict):
        await builds.secrets.create(user, body("deploy-key"))
    with pytest.raises(InvalidInput):
        await builds.secrets.create(user, body("bad-path", path="relative"))

    manifest = f"image: alpine/edge\nsecrets:\n  - deploy-key\n  - {created.uuid}\n" \
               "tasks:\n  - a: cat ~/.key\n"
    # Resolved by name and by UUID; another token cannot use them.
    stranger = await principal(db, "stranger", "jobs:submit")
    with pytest.raises(NotFound, match="deploy-key"):
        await builds.jobs.submit(stranger, JobSubmit(manifest=manifest))
    job = await builds.jobs.submit(user, JobSubmit(manifest=manifest.replace(
        f"  - {created.uuid}\n", "")))
    rt = await principal(db, "runner", "runner")
    runner = await builds.runners.register(rt, RunnerRegister(name="r",
                                                                images=["alpine/edge"]))
    assignment = await builds.runners.claim(rt, runner.id, wait=0)
    assert assignment is not None
    (secret,) = assignment.secrets
    assert base64.b64decode(secret.data) == VALUE and secret.path == "~/.key"
    # Masked in logs: the whole value and its long lines.
    chunk = VALUE + b"then c2VjcmV0LWtleS1tYXRlcmlhbA== again\n"
    await builds.runners.log(rt, runner.id, job.id, "a", 0, chunk)
    where = await builds.logs.locate(job.id, "a", 0, None)
    text = b"".join([c async for c in builds.logs.stream(where)])
    assert b"c2VjcmV0" not in text and text.count(b"********") == 2

    assert [s.name for s in await builds.secrets.all(user)] == ["deploy-key"]
    assert await builds.secrets.all(stranger) == []
    await builds.secrets.delete(user, created.uuid)
    assert await builds.secrets.all(user) == []


def test_server_masks_what_the_runner_masks() -> None:
    from nixfarm.masking import MIN_LENGTH, Masker
    from nixfarm.wire.runners import SecretValue

    raw = b"ab\nlong-enough-line\n"
    value = SecretValue(uuid="u", name="n", kind="file", path=None, mode=None,
                        data=base64.b64encode(raw).decode())
    server = masker([value])
    assert server.needles == Masker([raw]).needles == [b"ab\nlong-enough-line",
                                                        b"long-enough-line"]
    assert server.chunk(b"x ab y long-enough-line\n") == b"x ab y ********\n"
    assert len(b"ab") < MIN_LENGTH
