"""The scale-out farm end to end: two `nixfarm server`s, one PostgreSQL, one S3, one Redis.

Servers A and B share everything but their data dirs (and their memory), so each test
does something through one server and checks it through the other: a cache pushed to
through A is served by B, a job submitted to A runs on a runner connected to B and is
followed live on A, a cancel on B stops a runner connected to A, an image built by A is
served by B from the manifest cache in S3.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest

import nixfarm.demo
from nixfarm.registry.pulltokens import mint
from tests.fixtures.farm import NIXFARM, RunningFarm, free_port
from tests.fixtures.jobs import Follower, RunnerProcesses, wait_job
from tests.fixtures.nixenv import Nix
from tests.fixtures.postgres import scratch_database
from tests.fixtures.processes import running
from tests.fixtures.s3 import S3Server


@dataclass(frozen=True)
class Pair:
    a: RunningFarm
    b: RunningFarm
    bucket: str
    runner_token: str
    env: dict[str, str]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, postgres_url: str, s3_server: S3Server,
         redis_url: str) -> Iterator[Pair]:
    bucket = f"nixfarm-scale-{uuid.uuid4().hex[:12]}"
    s3_server.create_bucket(bucket)
    root = tmp_path_factory.mktemp("scale-out")
    with scratch_database(postgres_url) as database_url:
        env = {
            "NIXFARM_DATABASE_URL": database_url,
            "NIXFARM_REDIS_URL": redis_url,
            "NIXFARM_STORAGE__KIND": "s3",
            "NIXFARM_STORAGE__BUCKET": bucket,
            "NIXFARM_STORAGE__ENDPOINT": s3_server.endpoint,
            "NIXFARM_STORAGE__REGION": s3_server.region,
            "NIXFARM_STORAGE__ACCESS_KEY_ID": s3_server.access_key_id,
            "NIXFARM_STORAGE__SECRET_ACCESS_KEY": s3_server.secret_access_key,
            "NIXFARM_STORAGE__PREFIX": "farm",
            "NIXFARM_NIX_OPTIONS__SUBSTITUTERS": "",
            "NIXFARM_REGISTRY__SOURCE__KIND": "path",
            "NIXFARM_REGISTRY__SOURCE__LOCATION": str(nixfarm.demo.path()),
            # The keys every server shares, given as configuration (docs/setup.md).
            "NIXFARM_KEYS__SECRETS": base64.b64encode(os.urandom(32)).decode(),
            "NIXFARM_KEYS__REGISTRY_TOKEN": base64.b64encode(os.urandom(32)).decode(),
        }
        a = RunningFarm(root / "a", free_port(), extra_env=env, command="server")
        b = RunningFarm(root / "b", free_port(), extra_env=env, command="server")
        try:
            a.start()
            b.start()
            token = a.cli("token", "create", "--name", "runner", "--scope",
                          "runner").stdout.strip()
            yield Pair(a, b, bucket, token, env)
        finally:
            b.stop()
            a.stop()


class StartRunner(Protocol):
    def __call__(self, farm: RunningFarm) -> subprocess.Popen[bytes]: ...


@pytest.fixture(scope="module")
def runner_work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Shared by the module's runners (one at a time): the `nix` image is built once.
    return tmp_path_factory.mktemp("runner-work")


@pytest.fixture
def start_runner(pair: Pair, runner_work: Path, tmp_path: Path) -> Iterator[StartRunner]:
    """Starts `nixfarm runner`s connected to a given server; stops them after the test."""
    runners = RunnerProcesses(tmp_path, runner_work)

    def start(farm: RunningFarm) -> subprocess.Popen[bytes]:
        return runners.start(farm.url, pair.runner_token,
                             f"via-{farm.port}-{len(runners.started)}")

    yield start
    runners.stop()


def test_a_closure_pushed_through_a_is_substituted_from_b(pair: Pair, s3_server: S3Server,
                                                          nix: Nix) -> None:
    cache, public_key = pair.a.create_cache()
    path = nix.build("motd")
    pair.a.cli("push", "--cache", cache, path)

    # B signs nothing itself here: the narinfo it serves carries the signature made
    # with the cache's key from the shared database, which Nix checks.
    store = nix.fresh_store()
    nix.substitute(store, path, f"{pair.b.url}/cache/{cache}", public_key)
    assert (store / path.lstrip("/")).is_dir()

    info = pair.b.get(f"/cache/{cache}/{Path(path).name[:32]}.narinfo").text
    url = next(line.split(": ", 1)[1] for line in info.splitlines() if line.startswith("URL:"))
    r = pair.b.get(f"/cache/{cache}/{url}")
    assert r.status_code == 307
    location = r.headers["location"]
    assert location.startswith(f"{s3_server.endpoint}/{pair.bucket}/farm/{url}")
    assert "X-Amz-Signature=" in location
    assert httpx.get(location).status_code == 200


def test_a_re_upload_through_a_withdraws_what_b_remembers_and_published(
        pair: Pair, nix: Nix) -> None:
    cache, _ = pair.a.create_cache()
    path = nix.build("fortune")
    pair.a.cli("push", "--cache", cache, path)
    url = f"/cache/{cache}/{Path(path).name[:32]}.narinfo"
    pair.b.get(url, token="")
    published = pair.b.get(url, token="")
    assert "etag" in published.headers and "Deriver: " in published.text  # from B's nginx
    again = "".join(line + "\n" for line in published.text.splitlines()
                    if not line.startswith(("Deriver: ", "Sig: ")))
    assert pair.a.request("PUT", url, content=again).status_code == 200
    deadline = time.monotonic() + 5  # B hears of it over Redis
    while "Deriver: " in (now := pair.b.get(url, token="")).text \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    assert now.status_code == 200 and "Deriver: " not in now.text


LIVE_TASK = """\
image: nix
packages: [hello]
secrets: [@SECRET@]
tasks:
  - secret: |
      test "$(cat ~/.token)" = "@VALUE@"
      sleep 1  # time for the follower to connect before the ticks
  - ticks: |
      echo tick-1
      sleep 1
      echo tick-2
      sleep 1
      echo tick-3
      hello
"""


def test_a_job_submitted_to_a_runs_on_a_runner_of_b_and_is_followed_live_on_a(
        pair: Pair, start_runner: StartRunner, tmp_path: Path) -> None:
    start_runner(pair.b)
    # Sealed by A, opened by B for its runner: the servers share the secrets key.
    secret, value = f"s-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    r = pair.a.request("POST", "/api/v1/secrets", json={
        "name": secret, "kind": "file", "path": "~/.token",
        "data": base64.b64encode(value.encode()).decode()})
    assert r.status_code == 201, r.text
    manifest = tmp_path / "build.yml"
    manifest.write_text(LIVE_TASK.replace("@SECRET@", secret).replace("@VALUE@", value))
    env = {**os.environ, "NIXFARM_URL": pair.a.url, "NIXFARM_TOKEN": pair.a.token}
    submit = subprocess.Popen([NIXFARM, "submit", "--follow", str(manifest)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert submit.stdout is not None
        job_id = int(submit.stdout.readline().split()[0])
        follower = Follower(pair.a, f"/api/v1/jobs/{job_id}/events")
        follower.start()
        assert follower.connected.wait(10)
        connected = time.monotonic()
        out, errors = submit.communicate(timeout=90)
    finally:
        if submit.poll() is None:
            submit.kill()
            submit.wait()
    assert submit.returncode == 0, errors
    assert "tick-3" in out and "Hello, world!" in out

    follower.join(10)
    job = pair.a.get(f"/api/v1/jobs/{job_id}").json()
    assert job["status"] == "success"
    assert [t["status"] for t in job["tasks"]] == ["success", "success"]
    assert job["runner"] == f"via-{pair.b.port}-0"  # the runner that talks to B only

    arrived: dict[str, float] = {}
    for at, data in follower.logs():
        for tick in ("tick-1", "tick-2", "tick-3"):
            if tick in data["text"]:
                arrived.setdefault(tick, at)
    assert set(arrived) == {"tick-1", "tick-2", "tick-3"}, follower.events
    # Lines printed a second apart arrive a second apart: each came as it was printed
    # (runner -> B -> Redis -> A -> follower), not in a batch afterwards.
    for before, after in (("tick-1", "tick-2"), ("tick-2", "tick-3")):
        gap = arrived[after] - arrived[before]
        assert 0.7 < gap < 1.6, (before, after, gap)
    started = next(t for t, kind, d in follower.events
                   if kind == "task" and d.get("name") == "ticks"
                   and d.get("status") == "running")
    assert connected < started, "the follower connected late: it saw a replay"
    assert arrived["tick-1"] - started < 1.0


def wait_registered(farm: RunningFarm, name: str) -> None:
    deadline = time.monotonic() + 30
    while name not in {r["name"] for r in farm.get("/api/v1/runners").json()}:
        assert time.monotonic() < deadline, f"runner {name} never registered"
        time.sleep(0.1)


def test_a_cancel_through_b_stops_a_job_on_a_runner_of_a(
        pair: Pair, start_runner: StartRunner) -> None:
    # A runner of B that stopped left its claim long-poll behind on B: that poll must
    # not take the next job (which nobody would run until its lease expired).
    leaving = start_runner(pair.b)
    wait_registered(pair.b, f"via-{pair.b.port}-0")
    os.killpg(leaving.pid, signal.SIGTERM)
    leaving.wait(20)
    start_runner(pair.a)
    tag = str(700000 + int(uuid.uuid4().int % 90000))
    r = pair.a.request("POST", "/api/v1/jobs", json={
        "manifest": f"image: nix\npackages: [coreutils]\ntasks:\n"
                    f"  - wait: |\n      echo started\n      sleep {tag}\n"})
    assert r.status_code == 201, r.text
    job = r.json()
    assert wait_job(pair.a, job["id"], {"running"})["status"] == "running"
    deadline = time.monotonic() + 30
    while "started" not in pair.a.get(job["tasks"][0]["log_url"]).text:
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.1)

    assert pair.a.get(f"/api/v1/jobs/{job['id']}").json()["runner"] == f"via-{pair.a.port}-1"

    asked = time.monotonic()
    assert pair.b.request("POST", f"/api/v1/jobs/{job['id']}/cancel").status_code == 200
    assert wait_job(pair.a, job["id"], {"cancelled"}, 10)["status"] == "cancelled"
    while running(f"sleep {tag}"):
        assert time.monotonic() - asked < 3.0, "the job's processes outlived the cancel"
        time.sleep(0.05)


def _inspect(farm: RunningFarm, name: str) -> dict[str, Any]:
    done = subprocess.run(["skopeo", "inspect", "--tls-verify=false",
                           f"docker://127.0.0.1:{farm.port}/{name}:latest"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    inspected: dict[str, Any] = json.loads(done.stdout)
    return inspected


def test_an_image_built_through_a_is_served_by_b_from_the_manifest_cache(pair: Pair) -> None:
    name = "hello/cowsay"
    from_a = _inspect(pair.a, name)
    assert len(pair.a.get("/registry/builds").json()["builds"]) == 1
    started = time.monotonic()
    from_b = _inspect(pair.b, name)
    # B built nothing: its build board is empty, and it answered with A's manifest.
    assert pair.b.get("/registry/builds").json()["builds"] == []
    assert from_b["Digest"] == from_a["Digest"]
    assert from_b["Layers"] == from_a["Layers"]
    assert time.monotonic() - started < 5
    # The layers are in S3 too: B redirects to them (no Nix store needed on B's host).
    for layer in from_b["Layers"]:
        r = pair.b.get(f"/v2/{name}/blobs/{layer}", token="")
        assert r.status_code == 307, (layer, r.status_code)
        assert f"/{pair.bucket}/farm/" in r.headers["location"]



def test_a_pull_token_minted_by_a_is_accepted_by_another_server(pair: Pair,
                                                                 tmp_path: Path) -> None:
    # A third server of the farm that asks every pull for a token (same database, keys).
    c = RunningFarm(tmp_path / "c", free_port(), command="server",
                    extra_env={**pair.env, "NIXFARM_REGISTRY__REQUIRE_AUTH": "true"})
    c.start()
    try:
        minted = pair.a.get("/registry/token", token="", auth=("x", pair.a.token))
        assert minted.status_code == 200, minted.text
        assert c.get("/v2/", token=minted.json()["token"]).status_code == 200
        assert c.get("/v2/", token="").status_code == 401
        other_key = mint(os.urandom(32), 1, 60)  # the right shape, another farm's key
        assert c.get("/v2/", token=other_key).status_code == 401
    finally:
        c.stop()


def test_a_server_with_another_secrets_key_refuses_to_start(pair: Pair, tmp_path: Path) -> None:
    env = {**pair.env, "NIXFARM_KEYS__SECRETS": base64.b64encode(bytes(32)).decode()}
    done = subprocess.run(
        [NIXFARM, "server", "--data-dir", str(tmp_path / "c"),
         "--listen", f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=120, env={**os.environ, **env})
    assert done.returncode == 2, done.stderr
    message = done.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert "the secrets key in keys.secrets" in message and "is not this farm's" in message
