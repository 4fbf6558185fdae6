"""Ephemeral builders (issue 10): an enrollment token works once and only for minutes;
a builder's credential claims only its pool's jobs and pushes only to its pool's
caches. A real farm (``nixfarm up``) whose pools use the fake Vultr API; the test plays
the machines, from the user data the farm gave them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.builders.conftest import manifest, pool
from tests.builders.fakevultr import FakeVultr, running
from tests.builders.farm import Machine, builder_farm, submit, wait_for
from tests.fixtures.farm import RunningFarm


@pytest.fixture
def vultr() -> Iterator[FakeVultr]:
    with running() as fake:
        yield fake


def test_an_enrollment_token_works_once_and_expires(tmp_path: Path, vultr: FakeVultr) -> None:
    with builder_farm(tmp_path, vultr, [pool(caches=[], max_instances=2)],
                      enroll_seconds=10) as farm:
        submit(farm, manifest())
        submit(farm, manifest())
        creates = wait_for("two creates", lambda: len(vultr.creates()) == 2 and vultr.creates())
        created = time.monotonic()
        first, late = Machine(creates[0]), Machine(creates[1])
        assert first.enroll_token != late.enroll_token

        r = first.enroll()
        assert r.status_code == 201, r.text
        runner_token = r.json()["runner_token"]
        # Once: a second use (a copy of the user data) gets nothing.
        again = first.enroll()
        assert again.status_code == 401, again.text
        assert again.json()["error"]["message"] == \
            "the enrollment token is unknown, used or expired"
        assert again.text.count(runner_token) == 0
        # Guesses and other credentials get the same answer.
        assert first.enroll("nfe_" + "A" * 43).status_code == 401
        assert first.enroll(farm.token).status_code == 401

        # Minutes, not forever: past enroll_seconds the unused token is dead.
        time.sleep(max(0.0, 10.5 - (time.monotonic() - created)))
        expired = late.enroll()
        assert expired.status_code == 401, expired.text
        # The enrolled builder's credential is a runner token and nothing more.
        r = httpx.get(f"{farm.url}/api/v1/whoami",
                      headers={"Authorization": f"Bearer {runner_token}"})
        assert r.status_code == 200 and r.json()["scopes"] == ["runner"], r.text
        r = httpx.get(f"{farm.url}/api/v1/builders",
                      headers={"Authorization": f"Bearer {runner_token}"})
        assert r.status_code == 403, r.text


def _cache(farm: RunningFarm, name: str) -> None:
    r = farm.request("POST", "/api/v1/caches", json={"name": name})
    assert r.status_code == 201, r.text


def _push_allowed(farm: RunningFarm, cache: str, token: str) -> int:
    """The status of the upload Nix starts with (PUT nix-cache-info) under ``token``."""
    return httpx.put(f"{farm.url}/cache/{cache}/nix-cache-info", content=b"",
                     headers={"Authorization": f"Bearer {token}"}).status_code


def test_a_builder_pushes_only_to_its_pools_caches_and_claims_only_its_jobs(
        tmp_path: Path, vultr: FakeVultr) -> None:
    pools = [pool(name="vx", caches=["rel"], job_tags=["x"], lifecycle="keep-always",
                  max_instances=1),
             pool(name="vy", caches=["other"], job_tags=["y"], max_instances=0)]
    with builder_farm(tmp_path, vultr, pools) as farm:
        _cache(farm, "rel")
        _cache(farm, "other")
        # Queued first, so that a builder that did not filter would take them first:
        # a job of the other pool, and one of this pool's tag pushing to a cache the
        # pool may not push to.
        of_other_pool = submit(farm, manifest(cache="other"), tags=["y"])
        wrong_cache = submit(farm, manifest(cache="other"), tags=["x"])
        mine = submit(farm, manifest(cache="rel"), tags=["x"])
        [create] = wait_for("a create", vultr.creates)
        machine = Machine(create)
        enrolled = machine.join()
        assert enrolled["pool"] == "vx"

        # Its own credential pushes nowhere: not even to its pool's cache.
        assert _push_allowed(farm, "rel", machine.runner_token) == 403
        assert _push_allowed(farm, "other", machine.runner_token) == 403

        r = machine.claim(wait=5)
        assert r.status_code == 200 and r.json()["job_id"] == mine["id"], r.text
        grant = r.json()["cache"]
        assert grant["name"] == "rel"
        assert _push_allowed(farm, "rel", grant["token"]) == 200
        assert _push_allowed(farm, "other", grant["token"]) == 403
        r = machine.call("POST", f"/api/v1/runners/{machine.runner_id}/jobs/{mine['id']}/"
                         "finish", json={"status": "success"})
        assert r.status_code == 200, r.text

        # Nothing else is its to take, whatever it waits or registers as.
        assert machine.claim(wait=2).status_code == 204
        r = machine.call("POST", "/api/v1/runners", json={
            "name": "not-a-builder", "images": ["nix", "alpine/edge"]})
        assert r.status_code == 201, r.text
        other_runner = r.json()["id"]
        r = machine.call("POST", f"/api/v1/runners/{other_runner}/claim", json={"wait": 1})
        assert r.status_code == 204, r.text
        for job in (of_other_pool, wrong_cache):
            assert farm.get(f"/api/v1/jobs/{job['id']}").json()["status"] == "queued"

        # A builder destroyed by hand loses its credential at once.
        r = farm.request("DELETE", f"/api/v1/builders/{enrolled['builder_id']}")
        assert r.status_code == 200 and r.json()["state"] == "destroyed", r.text
        assert machine.claim().status_code == 401
