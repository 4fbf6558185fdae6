"""The autoscaler and the reaper against the fake Vultr API, on SQLite and PostgreSQL.

The test plays the builder's machine: it reads its user data from the create request
the fake recorded, enrolls with the token, and registers and claims as a runner with
the credential it got, as the netboot image's bootstrap does."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from typing import Any

import anyio
import pytest
import sqlalchemy as sa

from nixfarm.builders.base import farm_tag
from nixfarm.db.models import Builder, BuilderLease, Runner, utcnow
from nixfarm.errors import InvalidInput
from nixfarm.tokens import Principal
from nixfarm.wire.builders import Enrollment
from nixfarm.wire.jobs import JobSubmit
from nixfarm.wire.runners import FinishRequest, RunnerOut, RunnerRegister
from tests.builders.conftest import MakeStack, Stack, manifest, pool
from tests.builders.fakevultr import FakeVultr

pytestmark = pytest.mark.anyio


async def boot(stack: Stack, vultr: FakeVultr,
               index: int = 0) -> tuple[Principal, RunnerOut, Enrollment]:
    """Be the machine of the ``index``-th create: enroll, register as its runner."""
    data = json.loads(base64.b64decode(vultr.creates()[index]["user_data"]))
    assert set(data) == {"server", "enroll_token"}  # nothing else reaches the machine
    enrolled = await stack.builders.enroll(data["enroll_token"])
    who = await stack.tokens.authenticate(enrolled.runner_token)
    assert who is not None and who.scopes == ("runner",)
    runner = await stack.builds.runners.register(who, RunnerRegister(
        name=enrolled.name, images=enrolled.images, arch=enrolled.arch))
    return who, runner, enrolled


async def actions(stack: Stack, pool_name: str = "vx") -> list[tuple[str, str]]:
    return [(d.action, d.reason) for d in reversed(await stack.builders.decisions(pool_name))]


async def test_create_poll_enroll_build_destroy(make_stack: MakeStack,
                                                vultr: FakeVultr) -> None:
    vultr.polls_to_active = 2
    stack: Stack = await make_stack()
    job = await stack.submit(manifest(cache="rel"))
    await stack.scaler.once()

    [made] = await stack.builders.list_builders()
    assert made.state == "booting" and made.instance_id == vultr.live()[0]["id"]
    assert vultr.live()[0]["tags"] == [farm_tag("test"), "nixfarm-pool-vx",
                                       f"nixfarm-builder-{made.id}"]
    assert vultr.creates()[0]["ipxe_chain_url"] == \
        f"http://farm.test:8080/builders/{made.id}/boot.ipxe"
    # More passes while it boots create nothing more: it is the job's builder. They
    # poll its machine until it is active (the fake: at the second look).
    await stack.scaler.once()
    [pending] = await stack.builders.list_builders()
    assert pending.ip is None
    await stack.scaler.once()
    [polled] = await stack.builders.list_builders()
    assert polled.ip and polled.ip.startswith("203.0.113.")  # polled until active
    assert len(vultr.creates()) == 1

    who, runner, enrolled = await boot(stack, vultr)
    assert enrolled.builder_id == made.id and enrolled.server == "http://farm.test:8080"
    got = await stack.builds.runners.claim(who, runner.id, wait=0)
    assert got is not None and got.job_id == job.id
    assert got.cache is not None and got.cache.name == "rel"
    assert (await stack.builders.view(made.id)).runner_id == runner.id
    await stack.builds.runners.heartbeat(who, runner.id, job.id, 0)

    # While it builds, it is kept; a second job makes a second builder (it takes
    # one job only: destroy-after-job).
    second = await stack.submit(manifest())
    await stack.scaler.once()
    assert len(vultr.creates()) == 2
    assert await stack.builds.runners.claim(who, runner.id, wait=0) is None

    await stack.builds.runners.finish(who, runner.id, job.id, FinishRequest(status="success"))
    await stack.scaler.once()
    gone = await stack.builders.show(made.id)
    assert gone.state == "destroyed" and gone.reason == f"its job {job.id} ended success"
    assert made.instance_id not in [i["id"] for i in vultr.live()]
    assert len(vultr.calls("DELETE")) == 1
    assert await stack.tokens.authenticate(enrolled.runner_token) is None  # revoked
    assert [d.action for d in reversed(gone.decisions)] == ["create", "enroll", "destroy"]

    # The second builder takes the second job.
    who2, runner2, _ = await boot(stack, vultr, 1)
    got2 = await stack.builds.runners.claim(who2, runner2.id, wait=0)
    assert got2 is not None and got2.job_id == second.id


async def test_provider_errors_are_decisions(make_stack: MakeStack, vultr: FakeVultr) -> None:
    stack: Stack = await make_stack(pools=[pool(plan="vc9-nonsense")])
    await stack.submit(manifest())
    await stack.scaler.once()
    [failed] = await stack.builders.list_builders(include_destroyed=True)
    assert failed.state == "destroyed" and "Invalid plan chosen." in (failed.reason or "")
    assert ("fail", f"creating {failed.name} failed: Vultr refused to create instance "
            f"{failed.name} (vc9-nonsense in ewr): Invalid plan chosen. (HTTP 400); check "
            "the pool's region, plan and image") in await actions(stack)

    # A 500 and a 429 on the way are retried, and the builder is made.
    ok: Stack = await make_stack(pools=[pool(name="vy")])
    vultr.fail("POST", "/v2/instances", 500)
    vultr.fail("POST", "/v2/instances", 429)
    await ok.scaler.scale(ok.settings.builders.pools[0])
    [made] = await ok.builders.list_builders(pool="vy")
    assert made.state == "booting"
    assert [s.status for s in vultr.calls("POST")][-3:] == [500, 429, 202]


async def test_a_builder_that_never_enrolls_is_destroyed(make_stack: MakeStack,
                                                         vultr: FakeVultr) -> None:
    stack: Stack = await make_stack(pools=[pool(boot_timeout_seconds=1.5)])
    await stack.submit(manifest())
    await stack.scaler.once()
    [made] = await stack.builders.list_builders()
    await stack.scaler.once()
    assert (await stack.builders.view(made.id)).state == "booting"  # not yet
    await anyio.sleep(1.6)
    await stack.scaler.reap()
    gone = await stack.builders.view(made.id)
    assert gone.state == "destroyed" and vultr.live() == []
    assert ("reap", "it never enrolled within its boot timeout (2 s)") in await actions(stack)
    # Its token is spent with it: the machine can no longer join.
    data = json.loads(base64.b64decode(vultr.creates()[0]["user_data"]))
    with pytest.raises(Exception, match="unknown, used or expired"):
        await stack.builders.enroll(data["enroll_token"])


async def test_leaked_instances_are_reaped(make_stack: MakeStack, vultr: FakeVultr) -> None:
    stack: Stack = await make_stack(pools=[pool(max_instances=0)])
    leaked = vultr.leak([farm_tag("test"), "nixfarm-pool-vx", "nixfarm-builder-999"])
    other_farm = vultr.leak([farm_tag("someone-else"), "nixfarm-pool-vx"])
    untagged = vultr.leak([])
    await stack.scaler.once()
    assert sorted(i["id"] for i in vultr.live()) == sorted([other_farm, untagged])
    [(_action, reason)] = [a for a in await actions(stack) if a[0] == "reap"]
    assert reason == (f"instance {leaked} (leaked) carries this farm's tag but no live "
                      "builder of the farm owns it")


async def test_max_instances_and_the_spend_cap_stop_creation(make_stack: MakeStack,
                                                             vultr: FakeVultr) -> None:
    stack: Stack = await make_stack(pools=[
        pool(max_instances=10, hourly_price=0.05, max_hourly_spend=0.12),
        pool(name="one", max_instances=1, job_tags=["one"])])
    for _ in range(4):
        await stack.submit(manifest())
    for _ in range(3):
        await stack.submit(manifest(), tags=["one"])
    await stack.scaler.once()
    await stack.scaler.once()  # a refusal that holds is recorded once

    pools = {p.name: p for p in await stack.builders.pools()}
    assert pools["vx"].builders == 2 and pools["vx"].hourly_spend == pytest.approx(0.10)
    assert pools["one"].builders == 1
    assert len(vultr.creates()) == 3
    # The jobs tagged "one" are reserved for pool "one": vx counts only its own four.
    refusals = [r for a, r in await actions(stack) if a == "refuse"]
    assert refusals == ["4 queued jobs wait, but another builder (0.05/h) would take the "
                        "pool's spend from 0.1/h past max_hourly_spend (0.12/h)"]
    assert [r for a, r in await actions(stack, "one") if a == "refuse"] == [
        "3 queued jobs wait, but the pool is at max_instances (1)"]


async def test_the_pool_scales_to_zero(make_stack: MakeStack, vultr: FakeVultr) -> None:
    stack: Stack = await make_stack(pools=[pool(lifecycle="keep-always",
                                                idle_timeout_seconds=1.5)])
    job = await stack.submit(manifest())
    await stack.scaler.once()
    who, runner, _ = await boot(stack, vultr)
    got = await stack.builds.runners.claim(who, runner.id, wait=0)
    assert got is not None and got.job_id == job.id
    await stack.builds.runners.finish(who, runner.id, job.id, FinishRequest(status="failed"))
    await stack.scaler.once()
    # keep-always: kept after its job, and takes the next one.
    [kept] = await stack.builders.list_builders()
    assert kept.state == "ready"
    again = await stack.submit(manifest())
    got = await stack.builds.runners.claim(who, runner.id, wait=0)
    assert got is not None and got.job_id == again.id
    await stack.builds.runners.finish(who, runner.id, again.id, FinishRequest(status="success"))
    await stack.scaler.once()
    assert (await stack.builders.pools())[0].builders == 1
    await anyio.sleep(1.6)
    await stack.scaler.once()
    assert (await stack.builders.pools())[0].builders == 0 and vultr.live() == []
    assert (await actions(stack))[-1][1].startswith("idle for ")


async def test_keep_on_failure_holds_then_destroys(make_stack: MakeStack,
                                                   vultr: FakeVultr) -> None:
    stack: Stack = await make_stack(pools=[pool(lifecycle="keep-on-failure",
                                                hold_seconds=1.5)])
    job = await stack.submit(manifest())
    await stack.scaler.once()
    who, runner, _ = await boot(stack, vultr)
    assert await stack.builds.runners.claim(who, runner.id, wait=0) is not None
    await stack.builds.runners.finish(who, runner.id, job.id, FinishRequest(status="failed"))
    await stack.scaler.once()
    [held] = await stack.builders.list_builders()
    assert held.state == "held" and len(vultr.live()) == 1
    await stack.submit(manifest())  # a held builder takes nothing: a new one comes
    assert await stack.builds.runners.claim(who, runner.id, wait=0) is None
    await anyio.sleep(1.6)
    await stack.scaler.once()
    assert (await stack.builders.view(held.id)).state == "destroyed"


async def test_silent_builders_are_reaped(make_stack: MakeStack, vultr: FakeVultr) -> None:
    stack: Stack = await make_stack(heartbeat_timeout_seconds=61)
    await stack.submit(manifest())
    await stack.scaler.once()
    _who, runner, enrolled = await boot(stack, vultr)
    await stack.scaler.once()
    assert (await stack.builders.view(enrolled.builder_id)).state == "ready"
    # Its runner was last heard two minutes ago (time moved on, not the runner).
    past = utcnow() - timedelta(minutes=2)
    async with stack.db.session() as s:
        await s.execute(sa.update(Runner).where(Runner.id == runner.id)
                        .values(last_seen_at=past))
        await s.execute(sa.update(Builder).where(Builder.id == enrolled.builder_id)
                        .values(enrolled_at=past, created_at=past))
    await stack.scaler.reap()
    gone = await stack.builders.view(enrolled.builder_id)
    assert gone.state == "destroyed" and (gone.reason or "").startswith(
        "its heartbeats stopped: last heard 1")


async def test_server_stop_destroys_idle_builders_and_keeps_busy_ones(
        make_stack: MakeStack, vultr: FakeVultr) -> None:
    stack: Stack = await make_stack(pools=[pool(max_instances=3)])
    busy_job = await stack.submit(manifest())
    await stack.submit(manifest())
    await stack.scaler.once()
    who, runner, busy = await boot(stack, vultr, 0)
    got = await stack.builds.runners.claim(who, runner.id, wait=0)
    assert got is not None and got.job_id == busy_job.id
    _, _, idle = await boot(stack, vultr, 1)
    await stack.submit(manifest())
    await stack.scaler.once()  # a third, still booting

    destroyed = await stack.builders.shutdown()
    states = {b.id: b.state for b in await stack.builders.list_builders(include_destroyed=True)}
    assert states[busy.builder_id] == "ready" and states[idle.builder_id] == "destroyed"
    assert sorted(destroyed) == sorted(i for i in states if i != busy.builder_id)
    assert [i["id"] for i in vultr.live()] == [
        (await stack.builders.view(busy.builder_id)).instance_id]

    # The next server picks the busy builder up: its job ends, it is destroyed.
    after: Stack = await make_stack(pools=[pool(max_instances=3)])
    await stack.builds.runners.finish(who, runner.id, busy_job.id,
                                      FinishRequest(status="success"))
    await after.scaler.once()
    assert (await after.builders.view(busy.builder_id)).state == "destroyed"


async def test_pool_views(make_stack: MakeStack, vultr: FakeVultr) -> None:
    stack: Stack = await make_stack(pools=[pool(job_tags=["t"]), pool(name="b", caches=[])])
    await stack.submit(manifest(cache="rel"), tags=["t"])
    await stack.submit(manifest(cache="rel"))  # no tag: not vx's; a cache b may not use
    await stack.submit(manifest(image="alpine/edge"))  # nobody's image
    views: dict[str, Any] = {p.name: p for p in await stack.builders.pools()}
    assert views["vx"].queued == 1 and views["b"].queued == 0


async def test_a_job_queued_again_frees_its_builder(make_stack: MakeStack,
                                                    vultr: FakeVultr) -> None:
    stack: Stack = await make_stack(pools=[pool(lifecycle="keep-on-failure")])
    job = await stack.submit(manifest())
    await stack.scaler.once()
    who, runner, enrolled = await boot(stack, vultr)
    assert await stack.builds.runners.claim(who, runner.id, wait=0) is not None
    # The machine's runner stops mid-job: the job goes back to the queue (first run).
    await stack.builds.runners.finish(who, runner.id, job.id,
                                      FinishRequest(status="interrupted", reason="shutdown"))
    await stack.scaler.once()
    gone = await stack.builders.view(enrolled.builder_id)
    assert gone.state == "destroyed"
    assert gone.reason == f"its job {job.id} left it (now queued)"
    # ... and a fresh builder is made for it.
    assert len(vultr.creates()) == 2 and len(vultr.live()) == 1


async def test_two_slots_racing_take_one_job(make_stack: MakeStack, vultr: FakeVultr) -> None:
    stack: Stack = await make_stack(pools=[pool(max_instances=1)])
    first = await stack.submit(manifest())
    second = await stack.submit(manifest())
    await stack.scaler.once()
    data = json.loads(base64.b64decode(vultr.creates()[0]["user_data"]))
    enrolled = await stack.builders.enroll(data["enroll_token"])
    who = await stack.tokens.authenticate(enrolled.runner_token)
    assert who is not None
    runner = await stack.builds.runners.register(who, RunnerRegister(
        name=enrolled.name, images=enrolled.images, slots=2))
    got: list[Any] = []

    async def claim() -> None:
        got.append(await stack.builds.runners.claim(who, runner.id, wait=0))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(claim)
        tasks.start_soon(claim)
    taken = [g.job_id for g in got if g is not None]
    assert len(taken) == 1 and taken[0] in (first.id, second.id)  # one job per builder
    other = second.id if taken[0] == first.id else first.id
    left = await stack.builds.jobs.view(other)
    assert left.status == "queued" and left.runner is None


async def test_a_create_that_never_answered_is_given_up(make_stack: MakeStack,
                                                        vultr: FakeVultr) -> None:
    # The server stopped while Vultr was creating: the row stayed "creating", and the
    # machine was made (with the farm's tags) behind its back.
    stack: Stack = await make_stack(pools=[pool(boot_timeout_seconds=60, max_instances=1)])
    past = utcnow() - timedelta(minutes=5)
    async with stack.db.session() as s:
        row = Builder(name="nixfarm-test-vx-x", pool="vx", provider="vultr", state="creating",
                      created_at=past)
        s.add(row)
        await s.flush()
        stuck = row.id
    vultr.leak([farm_tag("test"), "nixfarm-pool-vx", f"nixfarm-builder-{stuck}"])
    await stack.scaler.reap()
    assert (await stack.builders.view(stuck)).state == "destroyed"
    assert vultr.live() == []  # its machine too, by the tag
    assert [a for a, _ in await actions(stack)] == ["reap", "reap"]


async def test_max_uptime_drains_then_destroys(make_stack: MakeStack,
                                               vultr: FakeVultr) -> None:
    stack: Stack = await make_stack(pools=[pool(lifecycle="keep-always", max_instances=1,
                                                max_uptime_seconds=2)])
    job = await stack.submit(manifest())
    await stack.scaler.once()
    who, runner, enrolled = await boot(stack, vultr)
    assert await stack.builds.runners.claim(who, runner.id, wait=0) is not None
    waiting = await stack.submit(manifest())
    await anyio.sleep(2.1)
    await stack.scaler.once()
    # Past its uptime it drains: it finishes its job but takes no other.
    drained = await stack.builders.view(enrolled.builder_id)
    assert drained.state == "draining", drained
    assert drained.reason == "it has been up longer than max_uptime (2 s)"
    await stack.builds.runners.finish(who, runner.id, job.id, FinishRequest(status="success"))
    assert await stack.builds.runners.claim(who, runner.id, wait=0) is None
    await stack.scaler.once()
    assert (await stack.builders.view(enrolled.builder_id)).state == "destroyed"
    # While it drained it still counted: the waiting job had to wait for it to go.
    assert [a for a, _ in await actions(stack)] == [
        "create", "enroll", "drain", "refuse", "destroy", "create"]
    assert (await stack.builds.jobs.view(waiting.id)).status == "queued"  # for the next


async def test_a_pool_removed_from_the_configuration_drains(make_stack: MakeStack,
                                                            vultr: FakeVultr) -> None:
    stack: Stack = await make_stack(pools=[pool(name="gone")])
    await stack.submit(manifest())
    await stack.scaler.once()
    _, _, enrolled = await boot(stack, vultr)
    # The server restarts without the pool: its builder goes (it runs no job).
    after: Stack = await make_stack(pools=[pool(name="other", max_instances=0)])
    await after.scaler.once()
    gone = await after.builders.view(enrolled.builder_id)
    assert gone.state == "destroyed" and gone.reason == "pool gone is no longer configured"
    assert vultr.live() == []


async def test_one_server_scales_at_a_time(make_stack: MakeStack, vultr: FakeVultr) -> None:
    one: Stack = await make_stack(interval_seconds=0.2)
    two: Stack = await make_stack(interval_seconds=0.2)
    assert await one.scaler.lead() and not await two.scaler.lead()
    assert await one.scaler.lead()  # renewed by its holder
    await one.submit(manifest())
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(two.scaler.run_forever)
        await anyio.sleep(1.5)
        assert vultr.creates() == []  # ``two`` waits while ``one`` holds the lease
        await one.scaler.resign()  # ``one`` stops
        with anyio.fail_after(20):
            while not vultr.creates():  # noqa: ASYNC110 - the fake server has no event
                await anyio.sleep(0.1)
        tasks.cancel_scope.cancel()
    assert two.scaler.leads and len(vultr.creates()) == 1
    # A lease that ran out (its server died) is taken over too.
    async with one.db.session() as s:
        await s.execute(sa.update(BuilderLease).values(
            expires_at=utcnow() - timedelta(seconds=1)))
    assert await one.scaler.lead() and not await two.scaler.lead()


async def test_pool_jobs_go_to_their_pools_builders_only(make_stack: MakeStack,
                                                         vultr: FakeVultr) -> None:
    stack: Stack = await make_stack(pools=[pool(job_tags=["t"], max_instances=1),
                                           pool(name="b", max_instances=0)])
    # A trusted runner that is no builder: what the embedded runner of `up --demo` is.
    _, secret = await stack.tokens.create("embedded", ["runner"])
    plain = await stack.tokens.authenticate(secret)
    assert plain is not None
    runner = await stack.builds.runners.register(plain, RunnerRegister(
        name="embedded", images=["nix"]))
    reserved = await stack.submit(manifest(cache="rel"), tags=["t"])  # vx's tag selects it
    anyones = await stack.submit(manifest())
    release = await stack.builds.jobs.submit(  # a release: the first pool taking it
        stack.admin, JobSubmit(manifest=manifest(), tags=["release"]), release=True)
    assert (reserved.pool, anyones.pool, release.pool) == ("vx", None, "b")
    got = await stack.builds.runners.claim(plain, runner.id, wait=0)
    assert got is not None and got.job_id == anyones.id
    assert await stack.builds.runners.claim(plain, runner.id, wait=0) is None

    # Each pool counts only the jobs it may take: b (no tags) takes none of vx's.
    views: dict[str, Any] = {p.name: p for p in await stack.builders.pools()}
    assert views["vx"].queued == 1 and views["b"].queued == 1
    await stack.scaler.once()
    who, builder_runner, enrolled = await boot(stack, vultr)
    assert enrolled.pool == "vx" and len(vultr.creates()) == 1
    got = await stack.builds.runners.claim(who, builder_runner.id, wait=0)
    assert got is not None and got.job_id == reserved.id

    # A pool named for a release must exist and take the job, else a 400 saying so.
    with pytest.raises(InvalidInput, match="there is no builder pool 'nope'"):
        await stack.builds.jobs.submit(stack.admin, JobSubmit(manifest=manifest()),
                                       release=True, pool="nope")
    with pytest.raises(InvalidInput, match=r"pool vx does not take this job: .* tagged t"):
        await stack.builds.jobs.submit(stack.admin, JobSubmit(manifest=manifest()),
                                       release=True, pool="vx")

    # A job whose pool is no longer configured is anyone's again.
    after: Stack = await make_stack(pools=[pool(job_tags=["t"], max_instances=1)])
    got = await after.builds.runners.claim(plain, runner.id, wait=0)
    assert got is not None and got.job_id == release.id


async def test_a_job_that_loses_its_builders_fails(make_stack: MakeStack,
                                                   vultr: FakeVultr) -> None:
    stack: Stack = await make_stack(pools=[pool(max_builders_per_job=1)])
    job = await stack.submit(manifest())
    await stack.scaler.once()
    who, runner, enrolled = await boot(stack, vultr)
    got = await stack.builds.runners.claim(who, runner.id, wait=0)
    assert got is not None and got.job_id == job.id
    # Its runner crashes and comes back up (it registers again): the job, on its first
    # run, is queued again, and would make one builder after another.
    await stack.builds.runners.register(who, RunnerRegister(
        name=enrolled.name, images=enrolled.images, arch=enrolled.arch))
    assert (await stack.builds.jobs.view(job.id)).status == "queued"
    await stack.scaler.once()
    failed = await stack.builds.jobs.view(job.id)
    assert failed.status == "failed", failed
    assert failed.reason == (f"it lost 1 builders of pool vx (the last, {enrolled.name}: its "
                             "runner stopped or fell silent while running it; "
                             "max_builders_per_job is 1); not queued again")
    assert (await stack.builders.view(enrolled.builder_id)).state == "destroyed"
    assert len(vultr.creates()) == 1 and vultr.live() == []  # no builder for it again
    assert ("give-up", f"job {job.id} failed: {failed.reason}") in await actions(stack)
    await stack.scaler.once()
    assert len(vultr.creates()) == 1


async def test_a_pool_whose_builders_never_enroll_backs_off(make_stack: MakeStack,
                                                            vultr: FakeVultr) -> None:
    settings = {"boot_timeout_seconds": 1.0, "max_boot_failures": 2,
                "boot_backoff_seconds": 60, "max_instances": 3}
    stack: Stack = await make_stack(pools=[pool(**settings)])
    await stack.submit(manifest())
    await stack.submit(manifest())
    await stack.scaler.once()
    assert len(vultr.creates()) == 2
    await anyio.sleep(1.1)
    await stack.scaler.once()  # both reaped, never enrolled: two failures in a row
    await stack.scaler.once()  # a back-off that holds is recorded once
    assert len(vultr.creates()) == 2 and vultr.live() == []
    backoffs = [r for a, r in await actions(stack) if a == "backoff"]
    assert len(backoffs) == 1, backoffs
    assert backoffs[0].startswith(
        "2 queued jobs wait, but the pool's last 2 builders failed to come up (the last, ")
    assert "it never enrolled within its boot timeout (1 s)): no new builder before " \
        in backoffs[0] and backoffs[0].endswith("(back-off of 60 s)")

    async def back_off_over() -> None:
        async with stack.db.session() as s:
            await s.execute(sa.update(Builder).values(
                destroyed_at=utcnow() - timedelta(seconds=1000)))

    # Once the back-off is over, one builder (not one per job) tries again...
    await back_off_over()
    await stack.scaler.once()
    assert len(vultr.creates()) == 3
    await stack.scaler.once()
    assert len(vultr.creates()) == 3  # ... and only one while it boots
    await anyio.sleep(1.1)
    await stack.scaler.once()
    # It failed too: the next back-off is twice as long.
    assert [r for a, r in await actions(stack) if a == "backoff"][-1].endswith(
        "(back-off of 120 s)")
    await back_off_over()
    await stack.scaler.once()
    assert len(vultr.creates()) == 4
    # This one comes up: the pool creates freely again.
    _, _, enrolled = await boot(stack, vultr, 3)
    await stack.submit(manifest())
    await stack.scaler.once()
    # Three jobs and one free builder: two more at once (max_instances 3).
    assert len(vultr.creates()) == 6 and enrolled.pool == "vx"
