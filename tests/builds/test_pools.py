"""Runner pools on SQLite and PostgreSQL: a claim takes only jobs its token's images,
owners and trust allow, and passes over the others without hiding the jobs behind."""

from __future__ import annotations

import base64

import pytest

from nixfarm.db.engine import Database
from nixfarm.errors import Conflict, InvalidInput
from nixfarm.tokens import Principal, TokenService
from nixfarm.wire.jobs import JobSubmit, SecretCreate
from nixfarm.wire.runners import RunnerRegister
from tests.builds.conftest import MakeBuilds, principal

pytestmark = pytest.mark.anyio


async def pooled(db: Database, name: str, images: list[str] | None = None,
                 owners: list[str] | None = None, trusted: bool = True) -> Principal:
    tokens = TokenService(db)
    _, secret = await tokens.create(name, ["runner"], None, images, owners, trusted)
    found = await tokens.authenticate(secret)
    assert found is not None
    return found


def manifest(image: str, secret: str | None = None) -> str:
    return (f"image: {image}\n" + (f"secrets: [{secret}]\n" if secret else "")
            + "tasks:\n  - a: make\n")


async def test_claims_follow_the_pool(db: Database, make_builds: MakeBuilds) -> None:
    builds = make_builds()
    alice = await principal(db, "alice", "jobs:submit")
    bob = await principal(db, "bob", "jobs:submit")
    images = ["alpine/edge", "nix"]
    narrow = await pooled(db, "narrow", images=["nix"], owners=["alice"], trusted=False)
    r_narrow = await builds.runners.register(narrow, RunnerRegister(name="n", images=images))
    await builds.secrets.create(alice, SecretCreate.model_validate(
        {"name": "key", "kind": "file", "data": base64.b64encode(b"v").decode(),
         "path": "~/k"}))

    # Jobs the pool refuses come first: they must not hide alice's plain nix job.
    other_image = await builds.jobs.submit(alice, JobSubmit(manifest=manifest("alpine/edge")))
    of_bob = await builds.jobs.submit(bob, JobSubmit(manifest=manifest("nix")))
    with_secret = await builds.jobs.submit(alice, JobSubmit(manifest=manifest("nix", "key")))
    plain = await builds.jobs.submit(alice, JobSubmit(manifest=manifest("nix")))

    got = await builds.runners.claim(narrow, r_narrow.id, wait=0)
    assert got is not None and got.job_id == plain.id and got.secrets == []
    assert await builds.runners.claim(narrow, r_narrow.id, wait=0) is None
    with pytest.raises(Conflict):  # it never held the job with a secret
        await builds.runners.heartbeat(narrow, r_narrow.id, with_secret.id, 0)

    # A trusted runner without a pool takes the rest, oldest first, secrets included.
    anyone = await pooled(db, "anyone")
    r_any = await builds.runners.register(anyone, RunnerRegister(name="a", images=images))
    taken = []
    while (a := await builds.runners.claim(anyone, r_any.id, wait=0)) is not None:
        taken.append((a.job_id, len(a.secrets)))
    assert taken == [(other_image.id, 0), (of_bob.id, 0), (with_secret.id, 1)]


async def test_pools_are_checked(db: Database) -> None:
    with pytest.raises(InvalidInput, match="runner scope"):
        await TokenService(db).create("x", ["jobs:submit"], None, ["nix"])
    with pytest.raises(InvalidInput, match="runner scope"):
        await TokenService(db).create("x", ["jobs:submit"], trusted=False)
    with pytest.raises(InvalidInput, match="runner_owners"):
        await TokenService(db).create("x", ["runner"], None, None, [])
    with pytest.raises(InvalidInput, match="runner_images"):
        await TokenService(db).create("x", ["runner"], None, ["nix", " "])
    with pytest.raises(InvalidInput, match="runner_images"):
        await TokenService(db).create("x", ["runner"], None, ["ni\x00x"])
    view, _ = await TokenService(db).create("x", ["runner"], None, [" nix", "nix"], ["a"])
    assert (view.runner_images, view.runner_owners, view.trusted) == (("nix",), ("a",), True)


async def test_jobs_for_a_forbidden_cache_do_not_hide_the_next(
        db: Database, make_builds: MakeBuilds) -> None:
    # More queued jobs than a claim looks at (20) push to a cache an untrusted runner
    # may not push to: the claim must pass over them in SQL and take the 21st.
    builds = make_builds()
    await builds.jobs.caches.create("main")
    alice = await principal(db, "alice", "jobs:submit", "cache:main:push")
    untrusted = await pooled(db, "untrusted", trusted=False)
    r_untrusted = await builds.runners.register(untrusted, RunnerRegister(name="u",
                                                                           images=["nix"]))
    pushing = [await builds.jobs.submit(alice, JobSubmit(
        manifest=manifest("nix") + "cache: main\n")) for _ in range(21)]
    plain = await builds.jobs.submit(alice, JobSubmit(manifest=manifest("nix")))

    got = await builds.runners.claim(untrusted, r_untrusted.id, wait=0)
    assert got is not None and got.job_id == plain.id and got.cache is None
    assert await builds.runners.claim(untrusted, r_untrusted.id, wait=0) is None

    # A trusted runner takes the pushing jobs, with their cache's push grant.
    trusted = await pooled(db, "trusted")
    r_trusted = await builds.runners.register(trusted, RunnerRegister(name="t",
                                                                       images=["nix"]))
    first = await builds.runners.claim(trusted, r_trusted.id, wait=0)
    assert first is not None and first.job_id == pushing[0].id
    assert first.cache is not None and first.cache.name == "main"
