"""The jobs API and the runner protocol, against a real `nixfarm up`.

The runner here is the test itself, speaking the runner protocol over HTTP exactly as
the runner agent does (register, claim, heartbeat, logs, task reports, artifacts,
finish); there is no sandbox: what is under test is the server. Webhooks go to a real
HTTP server and emails to a real SMTP server (aiosmtpd), both in this process.

Each test registers its runner with an image of its own, so a job submitted by one
test is never claimed by another's runner.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from email import message_from_bytes
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from aiosmtpd.controller import Controller

from nixfarm.client.api import Client, Endpoint
from nixfarm.client.jobs import JobsClient
from nixfarm.errors import Unavailable
from nixfarm.runner.logship import LogShipper
from nixfarm.runner.protocol import LeaseLost, RunnerClient
from tests.fixtures.farm import RunningFarm, free_port
from tests.fixtures.jobs import Follower, Received
from tests.fixtures.proxy import FlakyProxy

LEASE = 2.0
TIMEOUT_MINUTES = 0.1  # 6 s


# --- receivers ---------------------------------------------------------------------


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((list(envelope.rcpt_tos), bytes(envelope.content)))
        return "250 OK"


@pytest.fixture(scope="module")
def mailbox() -> Iterator[tuple[int, Mailbox]]:
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    yield port, box
    controller.stop()


@pytest.fixture(scope="module")
def jobs_farm(tmp_path_factory: pytest.TempPathFactory,
              mailbox: tuple[int, Mailbox]) -> Iterator[RunningFarm]:
    running = RunningFarm(tmp_path_factory.mktemp("jobs-farm") / "data", free_port())
    running.extra_env = {
        "NIXFARM_JOBS__LEASE_SECONDS": str(LEASE),
        "NIXFARM_JOBS__EMBEDDED_RUNNER_SLOTS": "0",  # the test is the runner
        "NIXFARM_JOBS__TIMEOUT_MINUTES": str(TIMEOUT_MINUTES),
        "NIXFARM_JOBS__TRIGGER_RETRY_SECONDS": "0.2",
        "NIXFARM_JOBS__SMTP_HOST": "127.0.0.1",
        "NIXFARM_JOBS__SMTP_PORT": str(mailbox[0]),
        "NIXFARM_JOBS__SMTP_FROM": "farm@example.org",
    }
    running.start()
    yield running
    running.stop()


# --- a runner speaking the protocol ------------------------------------------------


class Runner:
    def __init__(self, farm: RunningFarm, image: str | None = None) -> None:
        self.image = image or f"t{uuid.uuid4().hex[:8]}/edge"
        with farm.client() as admin:
            r = admin.post("/api/v1/tokens", json={"name": "runner", "scopes": ["runner"]})
            assert r.status_code == 201, r.text
            token = r.json()["secret"]
        self.http = httpx.Client(base_url=farm.url, timeout=30,
                                 headers={"Authorization": f"Bearer {token}"})
        self.name = f"runner-{uuid.uuid4().hex[:6]}"
        self.register()

    def register(self) -> None:
        """Register (again: as a runner does when it restarts)."""
        r = self.http.post("/api/v1/runners", json={
            "name": self.name, "images": [self.image], "sandboxes": ["bwrap"], "slots": 1})
        assert r.status_code == 201, r.text
        self.id = r.json()["id"]
        assert r.json()["lease_seconds"] == LEASE

    def claim(self, wait: float = 5.0) -> dict[str, Any] | None:
        r = self.http.post(f"/api/v1/runners/{self.id}/claim", json={"wait": wait})
        if r.status_code == 204:
            return None
        assert r.status_code == 200, r.text
        result: dict[str, Any] = r.json()
        return result

    def job(self, job_id: int) -> str:
        return f"/api/v1/runners/{self.id}/jobs/{job_id}"

    def heartbeat(self, job_id: int, wait: float = 0.0) -> httpx.Response:
        return self.http.post(f"{self.job(job_id)}/heartbeat", json={"wait": wait})

    def log(self, job_id: int, task: str | None, seq: int, text: str) -> dict[str, Any]:
        path = f"{self.job(job_id)}/log" if task is None else f"{self.job(job_id)}/tasks/{task}/log"
        r = self.http.post(path, params={"seq": seq}, content=text.encode())
        assert r.status_code == 200, r.text
        result: dict[str, Any] = r.json()
        return result

    def task(self, job_id: int, name: str, status: str, exit_code: int | None = None) -> None:
        r = self.http.post(f"{self.job(job_id)}/tasks/{name}",
                           json={"status": status, "exit_code": exit_code})
        assert r.status_code == 204, r.text

    def finish(self, job_id: int, status: str, **extra: Any) -> dict[str, Any]:
        r = self.http.post(f"{self.job(job_id)}/finish", json={"status": status, **extra})
        assert r.status_code == 200, r.text
        result: dict[str, Any] = r.json()
        return result


    def close(self) -> None:
        self.http.close()


NewRunner = Callable[..., Runner]


@pytest.fixture
def new_runner(jobs_farm: RunningFarm) -> Iterator[NewRunner]:
    made: list[Runner] = []

    def make(image: str | None = None) -> Runner:
        made.append(Runner(jobs_farm, image))
        return made[-1]

    yield make
    for runner in made:
        runner.close()


def manifest(image: str, tasks: dict[str, str], extra: str = "") -> str:
    lines = [f"image: {image}", "tasks:"]
    for name, script in tasks.items():
        lines += [f"  - {name}: |", f"      {script}"]
    return "\n".join(lines) + "\n" + extra


def submit(farm: RunningFarm, text: str, **body: Any) -> dict[str, Any]:
    r = farm.request("POST", "/api/v1/jobs", json={"manifest": text, **body})
    assert r.status_code == 201, r.text
    result: dict[str, Any] = r.json()
    return result


def wait_for(predicate: Any, seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


# --- tests -------------------------------------------------------------------------


SECRET_VALUE = "hunter2-very-secret-value"


def test_job_through_the_runner_protocol(jobs_farm: RunningFarm, new_runner: NewRunner,
                                         webhooks: tuple[str, Received],
                                         mailbox: tuple[int, Mailbox]) -> None:
    hook_url, received = webhooks
    runner = new_runner()
    r = jobs_farm.request("POST", "/api/v1/secrets", json={
        "name": f"file-{uuid.uuid4().hex[:6]}", "kind": "file",
        "data": base64.b64encode(SECRET_VALUE.encode()).decode(),
        "path": "~/.config/token", "mode": 0o600})
    assert r.status_code == 201, r.text
    secret = r.json()
    text = manifest(runner.image, {"build": "make", "test": "make check"}, f"""\
secrets:
  - {secret['uuid']}
environment:
  GREETING: hello
artifacts:
  - out/report.txt
triggers:
  - action: webhook
    condition: always
    url: {hook_url}/hook
  - action: email
    condition: success
    to: Dev <dev@example.org>
  - action: email
    condition: success
    cc: List <list@example.org>
  - action: email
    condition: failure
    to: nobody@example.org
""")
    job = submit(jobs_farm, text, tags=["ci", "main"], note="first", visibility="public")
    assert job["status"] == "queued"
    assert [t["name"] for t in job["tasks"]] == ["build", "test"]

    assignment = runner.claim()
    assert assignment is not None and assignment["job_id"] == job["id"]
    assert assignment["tasks"] == ["build", "test"]
    assert assignment["manifest"]["environment"] == {"GREETING": "hello"}
    (delivered,) = assignment["secrets"]
    assert base64.b64decode(delivered["data"]).decode() == SECRET_VALUE
    assert delivered["path"] == "~/.config/token" and delivered["mode"] == 0o600
    assert assignment["attempt"] == 1
    job_id = job["id"]

    follower = Follower(jobs_farm, f"/api/v1/jobs/{job_id}/events")
    follower.start()
    assert follower.connected.wait(10)
    assert runner.heartbeat(job_id).json()["stop"] is False

    runner.log(job_id, None, 0, f"setting up; token is {SECRET_VALUE}\n")
    assert runner.log(job_id, None, 0, "a retried chunk\n")["stored"] is False
    runner.task(job_id, "build", "running")
    sent = time.monotonic()
    runner.log(job_id, "build", 0, "compiling...\n")
    wait_for(lambda: any(d["text"] == "compiling...\n" for _, d in follower.logs()), 5,
             "the follower to see the line")
    seen = next(t for t, d in follower.logs() if d["text"] == "compiling...\n")
    assert seen - sent < 0.5
    runner.log(job_id, "build", 1, "done\n")
    runner.task(job_id, "build", "success", 0)
    runner.task(job_id, "test", "running")
    runner.log(job_id, "test", 0, "all tests passed\n")
    runner.task(job_id, "test", "success", 0)
    r = runner.http.put(f"{runner.job(job_id)}/artifacts/report.txt",
                        params={"path": "out/report.txt"}, content=b"42 tests\n")
    assert r.status_code == 201, r.text
    final = runner.finish(job_id, "success")
    assert final["status"] == "success"
    follower.join(10)
    kinds = [k for _, k, _ in follower.events]
    assert kinds[-1] == "end" and follower.events[-1][2]["status"] == "success"
    assert "task" in kinds

    # The logs, as text: masked, whole and by range.
    setup = jobs_farm.get(f"/api/v1/jobs/{job_id}/log", token="")
    assert setup.status_code == 200
    assert SECRET_VALUE not in setup.text and "token is ********" in setup.text
    build = jobs_farm.get(f"/api/v1/jobs/{job_id}/tasks/build/log")
    assert build.text == "compiling...\ndone\n"
    part = jobs_farm.get(f"/api/v1/jobs/{job_id}/tasks/build/log",
                         headers={"Range": "bytes=3-14"})
    assert part.status_code == 206 and part.text == "compiling...\ndone\n"[3:15]
    assert part.headers["content-range"] == "bytes 3-14/18"
    tail = jobs_farm.get(f"/api/v1/jobs/{job_id}/tasks/build/log",
                         headers={"Range": "bytes=-5"})
    assert tail.text == "done\n"
    # A late follower gets the stored log, then the end.
    late = Follower(jobs_farm, f"/api/v1/jobs/{job_id}/tasks/test/log/events")
    late.run()
    assert [d["text"] for _, d in late.logs()] == ["all tests passed\n"]

    artifact = jobs_farm.get(f"/api/v1/jobs/{job_id}/artifacts/report.txt")
    assert artifact.content == b"42 tests\n"

    # Triggers: a correctly signed webhook, and the success email (not the failure one).
    key = bytes.fromhex(jobs_farm.get("/api/v1/webhook-key").json()["key"])
    assert received.event.wait(10)
    headers, body = received.bodies[-1]
    expected = base64.b64encode(
        hmac.new(key, body + headers["x-payload-nonce"].encode(), hashlib.sha256).digest())
    assert headers["x-payload-signature"] == expected.decode()
    assert json.loads(body)["id"] == job_id and json.loads(body)["status"] == "success"
    _, box = mailbox
    wait_for(lambda: len(box.messages) == 2, 10, "the emails")
    by_rcpt = {tuple(rcpt): message_from_bytes(raw) for rcpt, raw in box.messages}
    assert sorted(by_rcpt) == [("dev@example.org",), ("list@example.org",)]
    mail = by_rcpt["dev@example.org",]
    assert mail["Subject"] == f"[nixfarm] job #{job_id} success"
    assert mail["From"] == "farm@example.org"
    # A trigger with only cc (as builds.sr.ht allows) mails its cc.
    cc_only = by_rcpt["list@example.org",]
    assert cc_only["Cc"] == "List <list@example.org>" and cc_only["To"] is None

    def triggers_settled() -> list[dict[str, Any]] | None:
        triggers: list[dict[str, Any]] = jobs_farm.get(f"/api/v1/jobs/{job_id}").json()["triggers"]
        return triggers if all(t["status"] != "pending" for t in triggers) else None

    triggers = wait_for(triggers_settled, 10, "triggers to be delivered")
    assert [t["status"] for t in triggers] == ["delivered", "delivered", "delivered", "skipped"]

    # Listing and filters.
    page = jobs_farm.get("/api/v1/jobs", params={"tag": "main", "status": "success"}).json()
    assert job_id in [j["id"] for j in page["jobs"]]
    anonymous = jobs_farm.get("/api/v1/jobs", token="").json()
    assert job_id in [j["id"] for j in anonymous["jobs"]]  # public


def test_failing_webhook_is_retried_and_never_changes_the_result(
        jobs_farm: RunningFarm, new_runner: NewRunner, webhooks: tuple[str, Received]) -> None:
    hook_url, _ = webhooks
    runner = new_runner()
    text = manifest(runner.image, {"fail": "false"}, f"""\
triggers:
  - action: webhook
    condition: failure
    url: {hook_url}/down
""")
    job_id = submit(jobs_farm, text)["id"]
    assert runner.claim() is not None
    runner.task(job_id, "fail", "running")
    runner.task(job_id, "fail", "failed", 1)
    runner.finish(job_id, "failed", reason="task 'fail' exited with 1", failed_step="tasks")

    def settled() -> dict[str, Any] | None:
        job: dict[str, Any] = jobs_farm.get(f"/api/v1/jobs/{job_id}").json()
        return job if job["triggers"][0]["status"] == "failed" else None

    job = wait_for(settled, 10, "the trigger to fail")
    assert job["status"] == "failed"
    assert job["reason"] == "tasks failed: task 'fail' exited with 1"
    deliveries = job["triggers"][0]["deliveries"]
    assert [d["attempt"] for d in deliveries] == [1, 2, 3]
    assert all(not d["ok"] and d["detail"] == "HTTP 500" for d in deliveries)


def test_log_chunks_outlive_a_server_that_stops_answering(
        jobs_farm: RunningFarm, new_runner: NewRunner,
        flaky_proxy: Callable[[int], FlakyProxy], caplog: pytest.LogCaptureFixture) -> None:
    runner = new_runner()
    job_id = submit(jobs_farm, manifest(runner.image, {"build": "make"}))["id"]
    assert runner.claim() is not None
    proxy = flaky_proxy(jobs_farm.port)
    token = runner.http.headers["authorization"].removeprefix("Bearer ")
    lines = [f"line {n}" for n in range(200)]
    # The test holds the lease on its own connection while the shipper's are dropped.
    stop = threading.Event()

    def keep_lease() -> None:
        while not stop.wait(0.5):
            runner.heartbeat(job_id)

    beats = threading.Thread(target=keep_lease)
    beats.start()

    async def ship() -> None:
        client = RunnerClient(proxy.url, token)
        client.runner_id = runner.id
        shipper = LogShipper(client, job_id)
        shipper.start()
        for line in lines[:100]:
            shipper.line(None, line)
        await shipper.flush()
        proxy.drop_next(3)
        proxy.cut()  # the pooled connection too: the next chunk needs a new one
        for line in lines[100:]:
            shipper.line(None, line)
        await shipper.close()
        await client.close()

    try:
        with caplog.at_level(logging.WARNING, "nixfarm.runner"):
            anyio.run(ship)
    finally:
        stop.set()
        beats.join()
    assert proxy.dropped == 3
    retried = [r.getMessage() for r in caplog.records if "log chunk 1 of setup" in r.message]
    assert len(retried) == 3 and "(attempt 3): cannot reach the server" in retried[-1]
    runner.finish(job_id, "success")

    async def refused() -> None:
        client = RunnerClient(jobs_farm.url, token)
        client.runner_id = runner.id
        with pytest.raises(LeaseLost):  # a call about a job no longer held
            await client.heartbeat(job_id, 0.0)
        await client.close()
        nowhere = RunnerClient(f"http://127.0.0.1:{free_port()}", token)
        with pytest.raises(Unavailable, match="cannot reach the server"):
            await nowhere.claim(0.0)
        await nowhere.close()

    anyio.run(refused)
    log = jobs_farm.get(f"/api/v1/jobs/{job_id}/log").text
    assert log == "".join(line + "\n" for line in lines)  # each line once, in order


def test_a_follower_resumes_where_its_connection_broke(
        jobs_farm: RunningFarm, new_runner: NewRunner,
        flaky_proxy: Callable[[int], FlakyProxy]) -> None:
    runner = new_runner()
    job_id = submit(jobs_farm, manifest(runner.image, {"build": "make"}))["id"]
    assert runner.claim() is not None
    proxy = flaky_proxy(jobs_farm.port)
    runner.log(job_id, None, 0, "setting up\n")
    runner.task(job_id, "build", "running")
    seen: list[tuple[str, dict[str, Any]]] = []
    # The lease is short here; on a loaded machine the waits below may outlast it.
    stop = threading.Event()

    def keep_lease() -> None:
        while not stop.wait(0.5):
            runner.heartbeat(job_id)

    beats = threading.Thread(target=keep_lease, daemon=True)
    beats.start()

    async def follow() -> None:
        async with Client(Endpoint(proxy.url, jobs_farm.token)) as client:
            async for event in JobsClient(client).follow(job_id):
                seen.append(event)

    def texts() -> list[str]:
        return [d["text"] for k, d in seen if k == "log" and d["task"] == "build"]

    follower = threading.Thread(target=anyio.run, args=(follow,))
    follower.start()
    lines = [f"line {n}\n" for n in range(15)]
    for seq, line in enumerate(lines[:5]):
        runner.log(job_id, "build", seq, line)
    wait_for(lambda: len(texts()) == 5, 10, "the first lines")
    proxy.drop_next(2)
    proxy.cut()  # mid-log: what is sent now reaches the follower only once it reconnects
    for seq, line in enumerate(lines[5:10], start=5):
        runner.log(job_id, "build", seq, line)
    wait_for(lambda: proxy.dropped == 2, 10, "the follower to try again")
    for seq, line in enumerate(lines[10:], start=10):
        runner.log(job_id, "build", seq, line)
    stop.set()
    beats.join()
    runner.task(job_id, "build", "success", 0)
    runner.finish(job_id, "success")
    follower.join(30)
    assert not follower.is_alive()
    assert texts() == lines  # each line once, in order, across the reconnection
    assert [d["text"] for k, d in seen if k == "log" and d["task"] is None] == ["setting up\n"]
    assert seen[-1] == ("end", {"status": "success"})
    # The ids are byte offsets: a follower resuming from one gets only what follows.
    tail = jobs_farm.get(f"/api/v1/jobs/{job_id}/tasks/build/log/events",
                         headers={"Last-Event-ID": str(len("".join(lines[:12])))})
    assert [json.loads(line[6:])["text"] for line in tail.text.splitlines()
            if line.startswith("data: ") and '"text"' in line] == lines[12:]
    bad = jobs_farm.get(f"/api/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "7"})
    assert bad.status_code == 400 and "Last-Event-ID" in bad.text


def test_silent_runner_loses_its_job(jobs_farm: RunningFarm, new_runner: NewRunner) -> None:
    runner = new_runner()
    job_id = submit(jobs_farm, manifest(runner.image, {"a": "true", "b": "true"}))["id"]
    assert runner.claim() is not None
    runner.task(job_id, "a", "running")
    runner.log(job_id, "a", 0, "working\n")
    stopped = time.monotonic()  # and then nothing: the runner was killed

    def lost() -> dict[str, Any] | None:
        job: dict[str, Any] = jobs_farm.get(f"/api/v1/jobs/{job_id}").json()
        return job if job["status"] != "running" else None

    job = wait_for(lost, LEASE + 3, "the lease to expire")
    assert time.monotonic() - stopped < LEASE + 1.5
    assert job["status"] == "failed" and job["reason"] == "runner lost"
    assert [t["status"] for t in job["tasks"]] == ["failed", "skipped"]
    # The runner, come back, is told the job is no longer its own.
    assert runner.heartbeat(job_id).status_code == 409
    # And a new runner takes the next job.
    fresh = new_runner(runner.image)
    next_id = submit(jobs_farm, manifest(runner.image, {"a": "true"}))["id"]
    assignment = fresh.claim()
    assert assignment is not None and assignment["job_id"] == next_id
    fresh.finish(next_id, "success")


def test_runner_lost_before_any_task_requeues_once(jobs_farm: RunningFarm,
                                                   new_runner: NewRunner) -> None:
    first = new_runner()
    job_id = submit(jobs_farm, manifest(first.image, {"a": "true"}))["id"]
    assert first.claim()["job_id"] == job_id  # type: ignore[index]
    second = new_runner(first.image)
    again = second.claim(wait=LEASE + 3)
    assert again is not None and again["job_id"] == job_id and again["attempt"] == 2
    # Lost again, before any task: this time the job fails.
    job = wait_for(lambda: (j := jobs_farm.get(f"/api/v1/jobs/{job_id}").json())["status"]
                   != "running" and j, LEASE + 3, "the second lease to expire")
    assert job["status"] == "failed" and job["reason"] == "runner lost"


def test_cancel_reaches_the_runner(jobs_farm: RunningFarm, new_runner: NewRunner) -> None:
    runner = new_runner()
    job_id = submit(jobs_farm, manifest(runner.image, {"long": "sleep 100"}))["id"]
    assert runner.claim() is not None
    runner.task(job_id, "long", "running")
    answers: list[tuple[float, dict[str, Any]]] = []

    def beat() -> None:
        while True:
            r = runner.heartbeat(job_id, wait=30)
            answers.append((time.monotonic(), r.json()))
            if r.json()["stop"]:
                return

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    time.sleep(0.3)
    cancelled_at = time.monotonic()
    r = jobs_farm.request("POST", f"/api/v1/jobs/{job_id}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    thread.join(5)
    at, answer = answers[-1]
    assert answer == {**answer, "stop": True, "reason": "cancelled"}
    assert at - cancelled_at < 2.0
    final = runner.finish(job_id, "failed", reason="killed")
    assert final["status"] == "cancelled"
    assert final["tasks"][0]["status"] == "cancelled"  # not what the kill made of it
    again = jobs_farm.request("POST", f"/api/v1/jobs/{job_id}/cancel")
    assert again.status_code == 409


def test_an_interrupted_job_runs_again_once_with_its_log_going_on(
        jobs_farm: RunningFarm, new_runner: NewRunner) -> None:
    runner = new_runner()
    job_id = submit(jobs_farm, manifest(runner.image, {"long": "sleep 100"}))["id"]
    first = runner.claim()
    assert first is not None and first["attempt"] == 1 and first["resume_logs"] == {}
    runner.log(job_id, None, 0, "booted\n")
    runner.task(job_id, "long", "running")
    runner.log(job_id, "long", 0, "first run\n")
    runner.log(job_id, "long", 1, "interrupted\n")
    # The runner stops (its host shuts down): queued again, tasks pending again.
    again = runner.finish(job_id, "interrupted", reason="runner x stopped")
    assert again["status"] == "queued" and "interrupted" in again["reason"]
    assert [t["status"] for t in again["tasks"]] == ["pending"]
    second = runner.claim()
    assert second is not None and second["attempt"] == 2
    assert second["resume_logs"] == {"": 1, "long": 2}  # the re-run's logs go on after
    runner.task(job_id, "long", "running")
    runner.log(job_id, "long", 2, "second run\n")
    # Interrupted again: it stays so, and so does its task.
    ended = runner.finish(job_id, "interrupted", reason="runner x stopped")
    assert ended["status"] == "interrupted" and ended["finished_at"] is not None
    assert [t["status"] for t in ended["tasks"]] == ["interrupted"]
    log = jobs_farm.get(f"/api/v1/jobs/{job_id}/tasks/long/log").text
    assert log == "first run\ninterrupted\nsecond run\n"


def test_a_runner_registering_again_has_its_jobs_settled_at_once(
        jobs_farm: RunningFarm, new_runner: NewRunner) -> None:
    runner = new_runner()
    job_id = submit(jobs_farm, manifest(runner.image, {"long": "sleep 100"}))["id"]
    assert runner.claim() is not None
    runner.task(job_id, "long", "running")
    runner.register()  # it restarted: whatever it ran is gone, long before the lease
    job = jobs_farm.get(f"/api/v1/jobs/{job_id}").json()
    assert job["status"] == "queued" and "restarted" in job["reason"], job
    assert runner.claim() is not None  # and it runs again


def test_job_time_limit(jobs_farm: RunningFarm, new_runner: NewRunner) -> None:
    runner = new_runner()
    job_id = submit(jobs_farm, manifest(runner.image, {"slow": "sleep 100"}))["id"]
    assert runner.claim() is not None
    runner.task(job_id, "slow", "running")
    deadline = time.monotonic() + TIMEOUT_MINUTES * 60 + 4
    answer: dict[str, Any] = {}
    while time.monotonic() < deadline:
        answer = runner.heartbeat(job_id, wait=1).json()
        if answer["stop"]:
            break
    assert answer["stop"] is True and answer["reason"] == "timeout"
    job = runner.finish(job_id, "failed", reason="killed")
    assert job["status"] == "timeout" and "limit of 6 seconds" in job["reason"]


def test_pending_jobs_groups_and_refusals(jobs_farm: RunningFarm,
                                          new_runner: NewRunner) -> None:
    runner = new_runner()
    a = submit(jobs_farm, manifest(runner.image, {"a": "true"}), execute=False)
    b = submit(jobs_farm, manifest(runner.image, {"b": "true"}), execute=False)
    assert a["status"] == b["status"] == "pending"
    assert runner.claim(wait=0) is None
    r = jobs_farm.request("POST", "/api/v1/job-groups",
                          json={"job_ids": [a["id"], b["id"]], "note": "pair"})
    assert r.status_code == 201, r.text
    group = r.json()
    assert [j["status"] for j in group["jobs"]] == ["queued", "queued"]
    r = jobs_farm.request("POST", f"/api/v1/job-groups/{group['id']}/cancel")
    assert [j["status"] for j in r.json()["jobs"]] == ["cancelled", "cancelled"]

    # Refused at submit: an image nobody offers, oauth, an unknown secret, no token.
    r = jobs_farm.request("POST", "/api/v1/jobs", json={
        "manifest": "image: nothere/1\noauth: x\ntasks:\n  - a: echo\n"})
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert "image 'nothere/1' is not available" in message and "oauth" in message
    r = jobs_farm.request("POST", "/api/v1/jobs", json={
        "manifest": manifest(runner.image, {"a": "true"}, "secrets:\n  - no-such-secret\n")})
    assert r.status_code == 404 and "no-such-secret" in r.json()["error"]["message"]
    r = jobs_farm.request("POST", "/api/v1/jobs", token="",
                          json={"manifest": manifest(runner.image, {"a": "true"})})
    assert r.status_code == 401
    # A runner token may not submit, and a submit token may not claim.
    r = runner.http.post("/api/v1/jobs", json={"manifest": manifest(runner.image, {"a": "x"})})
    assert r.status_code == 403


def test_private_jobs_are_hidden(jobs_farm: RunningFarm, new_runner: NewRunner) -> None:
    runner = new_runner()
    job = submit(jobs_farm, manifest(runner.image, {"a": "true"}), visibility="private",
                 execute=False)
    assert jobs_farm.get(f"/api/v1/jobs/{job['id']}", token="").status_code == 404
    assert jobs_farm.get(f"/api/v1/jobs/{job['id']}").status_code == 200
    jobs_farm.request("POST", f"/api/v1/jobs/{job['id']}/cancel")


def run_cli(farm: RunningFarm, capsys: pytest.CaptureFixture[str],
            monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str, str]:
    """``nixfarm ARGS`` in this process (a subprocess costs seconds of imports here)."""
    from nixfarm.cli.main import main

    monkeypatch.setenv("NIXFARM_URL", farm.url)
    monkeypatch.setenv("NIXFARM_TOKEN", farm.token)
    monkeypatch.setattr("sys.argv", ["nixfarm", *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main()
    captured = capsys.readouterr()
    return int(exited.value.code or 0), captured.out, captured.err


def test_cli(jobs_farm: RunningFarm, new_runner: NewRunner, tmp_path: Path,
             capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def cli(*args: str) -> tuple[int, str, str]:
        return run_cli(jobs_farm, capsys, monkeypatch, *args)

    runner = new_runner()
    good = tmp_path / "good.yml"
    good.write_text(manifest(runner.image, {"hello": "echo hi"}))
    bad = tmp_path / "bad.yml"
    bad.write_text("image: alpine/edge\ntasks:\n  - Bad Name: echo\n")
    assert cli("manifest", "check", str(good))[0] == 0
    code, _, stderr = cli("manifest", "check", str(bad))
    assert code == 2 and "line 3" in stderr

    def run_job(status: str) -> None:
        assignment = runner.claim(wait=20)
        assert assignment is not None
        job_id = assignment["job_id"]
        runner.task(job_id, "hello", "running")
        runner.log(job_id, "hello", 0, "hi from the sandbox\n")
        runner.task(job_id, "hello", status, 0 if status == "success" else 1)
        runner.finish(job_id, status)

    # The documented contract, through the real executable: id and URL, the log,
    # and the exit code.
    for status, code in (("success", 0), ("failed", 1)):
        thread = threading.Thread(target=run_job, args=(status,), daemon=True)
        thread.start()
        done = jobs_farm.cli("submit", str(good), "--follow", check=False)
        thread.join(10)
        assert done.returncode == code, done.stderr
        job_id = done.stdout.split()[0]
        assert done.stdout.startswith(f"{job_id} {jobs_farm.url}/jobs/{job_id}\n")
        assert "hi from the sandbox" in done.stdout

    code, listing, _ = cli("jobs")
    assert code == 0 and f"{job_id} failed" in " ".join(listing.split())
    code, logs, _ = cli("logs", job_id)
    assert code == 0 and "hi from the sandbox" in logs

    code, submitted, _ = cli("submit", str(good), "--no-execute", "--tag", "x")
    new_id = submitted.split()[0]
    assert cli("cancel", new_id)[0] == 0
    assert jobs_farm.get(f"/api/v1/jobs/{new_id}").json()["status"] == "cancelled"
    code, said, _ = cli("cancel", new_id)  # already ended: no error, and it says so
    assert code == 0 and said.strip() == f"job {new_id} already ended: cancelled"

    secret_file = tmp_path / "id_ed25519"
    secret_file.write_text("not really a key\n")
    name = f"key-{uuid.uuid4().hex[:6]}"
    code, created, _ = cli("secret", "create", name, str(secret_file), "--kind", "ssh_key")
    assert code == 0 and uuid.UUID(created.strip())
    assert name in cli("secret", "list")[1]
    assert cli("secret", "delete", name)[0] == 0
    assert name not in cli("secret", "list")[1]


def test_web_pages(jobs_farm: RunningFarm, new_runner: NewRunner) -> None:
    runner = new_runner()
    job = submit(jobs_farm, manifest(runner.image, {"webtask": "true"}), visibility="public",
                 note="<b>shown escaped</b>")
    listing = jobs_farm.get("/jobs", token="")
    assert listing.status_code == 200 and f'href="/jobs/{job["id"]}"' in listing.text
    page = jobs_farm.get(f"/jobs/{job['id']}", token="")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    # Each task's log is a section of its own; a running job's page follows its events.
    assert 'id="log-task-webtask"' in page.text
    assert f'data-events="/jobs/{job["id"]}/events?from=' in page.text
    assert "&lt;b&gt;shown escaped&lt;/b&gt;" in page.text
    jobs_farm.request("POST", f"/api/v1/jobs/{job['id']}/cancel")


MANIFEST_FIXTURES = Path(__file__).parents[1] / "manifest" / "fixtures"


def test_manifest_check_says_what_submit_says(
        jobs_farm: RunningFarm, new_runner: NewRunner, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """One decision for both: real public manifests, ours, and answers that depend on
    the server (oauth, shell, an image no runner offers, a secret) get the same answer
    from ``POST /api/v1/manifests/check`` as from a submit, warnings included."""
    runner = new_runner("alpine/edge")
    texts = {p.name: p.read_text() for p in sorted(MANIFEST_FIXTURES.glob("*/*.yml"))}
    texts |= {
        "oauth": "image: alpine/edge\noauth: 'git.sr.ht/REPOSITORIES:RO'\ntasks:\n  - a: b\n",
        "shell": "image: alpine/edge\nshell: true\n",
        "no runner": "image: nobody/offers\ntasks:\n  - a: b\n",
        "secret": "image: alpine/edge\nsecrets: [no-such-secret]\ntasks:\n  - a: b\n",
        "typo": manifest(runner.image, {"a": "true"}, "enviroment:\n  A: 1\n"),
    }
    accepted = []
    for name, text in texts.items():
        checked = jobs_farm.request("POST", "/api/v1/manifests/check", json={"manifest": text})
        submitted = jobs_farm.request("POST", "/api/v1/jobs",
                                      json={"manifest": text, "execute": False})
        if submitted.status_code == 201:
            accepted.append(name)
            assert checked.status_code == 200, (name, checked.text)
            assert checked.json()["warnings"] == submitted.json()["warnings"], name
            jobs_farm.request("POST", f"/api/v1/jobs/{submitted.json()['id']}/cancel")
        else:
            assert (checked.status_code, checked.json()) == (
                submitted.status_code, submitted.json()), name
    assert "as-people-write.yml" in accepted and "typo" in accepted
    assert {"oauth", "no runner", "secret"}.isdisjoint(accepted)
    assert "shell" in accepted  # `shell: true` keeps the sandbox for `nixfarm shell`
    assert len(accepted) >= 5  # real manifests on alpine/edge among them

    # The CLI: check and submit print the same warnings (stderr), and the same refusal.
    def cli(*args: str) -> tuple[int, str, str]:
        return run_cli(jobs_farm, capsys, monkeypatch, *args)

    people = MANIFEST_FIXTURES / "good" / "as-people-write.yml"
    warning = ("warning: enviroment: line 10, column 1: unknown key 'enviroment' is "
               "ignored; did you mean 'environment'?")
    code, stdout, stderr = cli("manifest", "check", str(people))
    assert code == 0 and warning in stderr.splitlines(), stderr
    assert stdout.strip() == f"{people}: valid (1 tasks, image alpine/edge)"
    code, stdout, stderr = cli("submit", str(people), "--no-execute")
    assert code == 0 and warning in stderr.splitlines(), stderr
    jobs_farm.request("POST", f"/api/v1/jobs/{stdout.split()[0]}/cancel")
    oauth = tmp_path / "oauth.yml"
    oauth.write_text(texts["oauth"])
    check_code, _, check_err = cli("manifest", "check", str(oauth))
    submit_code, _, submit_err = cli("submit", str(oauth), "--no-execute")
    assert check_code == submit_code == 2
    assert check_err == submit_err and "oauth is not supported" in check_err
    # Without a server, the format only, and it says so.
    monkeypatch.delenv("NIXFARM_URL")
    monkeypatch.setattr("sys.argv", ["nixfarm", "manifest", "check", str(oauth)])
    from nixfarm.cli.main import main

    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code in (0, None)
    assert "not checked against a server" in capsys.readouterr().out
