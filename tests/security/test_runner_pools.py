"""Runner pools (issue 12, point 10): a runner token narrowed to images and job owners
claims only their jobs, an untrusted one never a job with secrets, and both hold
across a restart of the farm. Real farm, real runners, real jobs."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from tests.fixtures.farm import RunningFarm
from tests.security.conftest import (
    Runner,
    Tenant,
    make_farm,
    start_runner,
    stop_runner,
    tenant,
)


def _name(farm: RunningFarm, token: str) -> str:
    r = farm.get("/api/v1/whoami", token)
    assert r.status_code == 200, r.text
    name: str = r.json()["name"]
    return name


def _status(farm: RunningFarm, job: dict[str, Any]) -> str:
    r = farm.get(f"/api/v1/jobs/{job['id']}")
    assert r.status_code == 200, r.text
    status: str = r.json()["status"]
    return status


def _registered(farm: RunningFarm, name: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if any(r["name"] == name for r in farm.get("/api/v1/runners").json()):
            return
        time.sleep(0.3)
    raise AssertionError(f"runner {name} did not register in {seconds} s")


def _runner(farm: RunningFarm, where: Path, name: str, *options: str) -> Runner:
    where.mkdir()
    runner = start_runner(farm, where, token_options=options, name=name)
    _registered(farm, name)
    return runner


def test_pools_narrow_what_runners_claim(tmp_path: Path) -> None:
    farm = make_farm(tmp_path, network=False)
    runners: list[Runner] = []
    try:
        alice, bob = tenant(farm, "alice"), tenant(farm, "bob")
        alice_name, bob_name = _name(farm, alice.token), _name(farm, bob.token)

        # Nonsense pools are refused with the field named.
        bad = farm.cli("token", "create", "--scope", "jobs:submit", "--images", "nix",
                       check=False)
        assert bad.returncode != 0 and "runner scope" in bad.stderr, bad.stderr
        bad = farm.cli("token", "create", "--scope", "runner", "--owners", "", check=False)
        assert bad.returncode != 0 and "runner_owners" in bad.stderr, bad.stderr

        runners.append(_runner(farm, tmp_path / "r1", "pool-alice-untrusted",
                               "--owners", alice_name, "--untrusted"))
        plain = alice.submit({"hello": "echo hello"})
        secret = alice.secret("pool-secret-value")
        with_secret = alice.submit({"read": "cat ~/secret"}, f"secrets: [{secret}]\n")
        of_bob = bob.submit({"hello": "echo bob"})

        done = alice.wait(plain)
        assert done["status"] == "success" and done["runner"] == "pool-alice-untrusted", done
        # The untrusted runner for alice left bob's job and the one with a secret.
        time.sleep(3)
        assert _status(farm, of_bob) == "queued"
        assert _status(farm, with_secret) == "queued"

        listed = json.loads(farm.cli("token", "list", "--json").stdout)
        pool = [t for t in listed if t["runner_owners"] == [alice_name]]
        assert len(pool) == 1 and pool[0]["trusted"] is False, listed
        assert pool[0]["runner_images"] is None
        table = farm.cli("token", "list").stdout
        assert "owners=alice-" in table and "untrusted" in table, table

        # The constraints are stored: a new server process keeps them.
        farm.stop()
        farm.start()
        time.sleep(3)
        assert _status(farm, of_bob) == "queued"
        assert _status(farm, with_secret) == "queued"

        # Bob's job waits for a runner of his pool; alice's secret for a trusted one.
        runners.append(_runner(farm, tmp_path / "r2", "pool-bob",
                               "--images", "nix,demo/latest", "--owners", bob_name))
        done = bob.wait(of_bob)
        assert done["status"] == "success" and done["runner"] == "pool-bob", done
        assert _status(farm, with_secret) == "queued"

        runners.append(_runner(farm, tmp_path / "r3", "pool-trusted"))
        done, logs = alice.wait(with_secret), ""
        logs = alice.logs(done)
        assert done["status"] == "success" and done["runner"] == "pool-trusted", done
        assert "pool-secret-value" not in logs  # masked, yet it was there to read
    finally:
        for runner in runners:
            stop_runner(runner)
        farm.stop()


def test_untrusted_runner_is_refused_jobs_with_secrets(alice: Tenant,
                                                       offline_farm: RunningFarm) -> None:
    """Through the runner protocol: an untrusted runner's claim does not return the job
    with a secret, and its calls about that job are refused."""
    farm = offline_farm
    token = farm.cli("token", "create", "--name", "untrusted-probe", "--scope", "runner",
                     "--images", "nix", "--untrusted").stdout.strip()
    r = farm.request("POST", "/api/v1/runners", token,
                     json={"name": "untrusted-probe", "images": ["nix"], "sandboxes": ["bwrap"]})
    assert r.status_code in (200, 201), r.text
    probe = r.json()["id"]
    # The fixture's trusted runner is busy for a while: the job stays queued meanwhile.
    busy = alice.submit({"hold": "sleep 8"})
    busy2 = alice.submit({"hold": "sleep 8"})
    secret = alice.secret("probe-secret-value")
    job = alice.submit({"read": "cat ~/secret"}, f"secrets: [{secret}]\n")
    claimed = farm.request("POST", f"/api/v1/runners/{probe}/claim", token, json={"wait": 2})
    assert claimed.status_code == 204, claimed.text
    assert "probe-secret-value" not in claimed.text
    beat = farm.request("POST", f"/api/v1/runners/{probe}/jobs/{job['id']}/heartbeat", token,
                        json={"wait": 0})
    assert beat.status_code == 409, beat.text
    log = farm.request("POST", f"/api/v1/runners/{probe}/jobs/{job['id']}/log", token,
                       content=b"x", params={"seq": 0})
    assert log.status_code == 409, log.text
    for j in (busy, busy2, job):
        assert alice.wait(j)["status"] == "success"
    assert alice.wait(job)["runner"] != "untrusted-probe"


def test_untrusted_runner_is_refused_jobs_that_push_to_a_cache(
        offline_farm: RunningFarm) -> None:
    """A job with ``cache:`` gets a push token for that cache (and the server signs what
    it receives): an untrusted runner never claims one, a trusted runner runs it."""
    farm = offline_farm
    cache, _ = farm.create_cache()
    carol = Tenant(farm, "carol", farm.cli(
        "token", "create", "--name", f"carol-{uuid.uuid4().hex[:6]}", "--scope",
        "jobs:submit", "--scope", f"cache:{cache}:push").stdout.strip())
    token = farm.cli("token", "create", "--name", "untrusted-cache-probe", "--scope",
                     "runner", "--images", "nix", "--untrusted").stdout.strip()
    r = farm.request("POST", "/api/v1/runners", token,
                     json={"name": "untrusted-cache-probe", "images": ["nix"],
                           "sandboxes": ["bwrap"]})
    assert r.status_code in (200, 201), r.text
    probe = r.json()["id"]
    # The fixture's trusted runner is busy meanwhile, so the job stays queued.
    busy = [carol.submit({"hold": "sleep 8"}) for _ in range(2)]
    job = carol.submit({"hello": "echo pushed-nothing"}, f"cache: {cache}\n")
    claimed = farm.request("POST", f"/api/v1/runners/{probe}/claim", token, json={"wait": 2})
    assert claimed.status_code == 204, claimed.text
    for j in (*busy, job):
        assert carol.wait(j)["status"] == "success"
    assert carol.wait(job)["runner"] != "untrusted-cache-probe"


def test_a_pool_can_be_changed_and_the_next_claim_follows_it(tmp_path: Path) -> None:
    """``nixfarm token pool`` (PATCH /api/v1/tokens/ID) narrows or widens a runner
    token's pool; its runner's very next claim follows, without a restart."""
    farm = make_farm(tmp_path, network=False)
    try:
        alice = tenant(farm, "alice")
        alice_name = _name(farm, alice.token)
        token = farm.cli("token", "create", "--name", "editable", "--scope", "runner",
                         "--owners", "nobody-yet").stdout.strip()
        (row,) = [t for t in json.loads(farm.cli("token", "list", "--json").stdout)
                  if t["name"] == "editable"]
        r = farm.request("POST", "/api/v1/runners", token,
                         json={"name": "editable", "images": ["nix"], "sandboxes": ["bwrap"]})
        assert r.status_code in (200, 201), r.text
        runner = r.json()["id"]

        def claim() -> dict[str, Any] | None:
            got = farm.request("POST", f"/api/v1/runners/{runner}/claim", token,
                               json={"wait": 1})
            assert got.status_code in (200, 204), got.text
            return got.json() if got.status_code == 200 else None

        plain = alice.submit({"hello": "echo hello"})
        assert claim() is None  # not alice's runner yet
        said = farm.cli("token", "pool", str(row["id"]), "--owners", alice_name,
                        "--untrusted").stdout
        assert f"owners={alice_name} untrusted" in said, said
        first = claim()
        assert first is not None and first["job_id"] == plain["id"], first

        secret = alice.secret("pool-edit-secret")
        with_secret = alice.submit({"read": "cat ~/secret"}, f"secrets: [{secret}]\n")
        assert claim() is None  # untrusted: the job with a secret is passed over
        r = farm.request("PATCH", f"/api/v1/tokens/{row['id']}",
                         json={"trusted": True, "runner_owners": None})
        assert r.status_code == 200, r.text
        assert r.json()["runner_owners"] is None and r.json()["trusted"] is True
        second = claim()
        assert second is not None and second["job_id"] == with_secret["id"], second

        # What stays: a field left out; what is refused: nonsense, named.
        listed = {t["id"]: t for t in json.loads(farm.cli("token", "list", "--json").stdout)}
        assert listed[row["id"]]["runner_images"] is None
        bad = farm.request("PATCH", f"/api/v1/tokens/{row['id']}",
                           json={"runner_images": []})
        assert bad.status_code == 400 and "runner_images" in bad.text, bad.text
        submitter = next(t for t in listed.values() if t["name"] == alice_name)
        bad = farm.request("PATCH", f"/api/v1/tokens/{submitter['id']}",
                           json={"trusted": False})
        assert bad.status_code == 400 and "no runner scope" in bad.text, bad.text
        assert farm.request("PATCH", "/api/v1/tokens/999999",
                            json={"trusted": False}).status_code == 404
        denied = farm.request("PATCH", f"/api/v1/tokens/{row['id']}", alice.token,
                              json={"runner_owners": None})
        assert denied.status_code == 403, denied.text
        cli = farm.cli("token", "pool", str(row["id"]), check=False)
        assert cli.returncode == 2 and "nothing to change" in cli.stderr, cli.stderr
    finally:
        farm.stop()
