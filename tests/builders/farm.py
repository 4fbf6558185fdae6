"""A real farm (``nixfarm up``) whose builder pools use the fake Vultr API, and a
machine played by the test: it reads its user data from the create request the fake
recorded, and speaks to the farm over HTTP as the netboot image's bootstrap does."""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.builders.conftest import builder_settings
from tests.builders.fakevultr import FakeVultr
from tests.fixtures.farm import RunningFarm, free_port


def _toml(value: Any) -> str:
    return json.dumps(value)  # strings, numbers, booleans and lists read the same in TOML


def write_config(path: Path, builders: dict[str, Any], lease_seconds: float = 30) -> None:
    lines = ["[jobs]", "embedded_runner_slots = 0", f"lease_seconds = {lease_seconds}", "",
             "[builders]"]
    lines += [f"{k} = {_toml(v)}" for k, v in builders.items()
              if k not in ("vultr", "pools")]
    lines += ["", "[builders.vultr]"]
    lines += [f"{k} = {_toml(v)}" for k, v in builders["vultr"].items()]
    for pool in builders["pools"]:
        lines += ["", "[[builders.pools]]"] + [f"{k} = {_toml(v)}" for k, v in pool.items()]
    path.write_text("\n".join(lines) + "\n")


@contextlib.contextmanager
def builder_farm(where: Path, vultr: FakeVultr, pools: list[dict[str, Any]],
                 lease_seconds: float = 30, **builders: Any) -> Iterator[RunningFarm]:
    data = where / "data"
    data.mkdir(parents=True)
    write_config(data / "nixfarm.toml",
                 builder_settings(vultr, pools, interval_seconds=0.3, **builders),
                 lease_seconds)
    farm = RunningFarm(data, free_port())
    start(farm)
    try:
        yield farm
    finally:
        farm.stop()


def start(farm: RunningFarm) -> None:
    """``farm.start()``, patient: on a loaded machine a farm (every migration, nginx,
    the worker) can take longer than the fixture's 30 s to answer; a farm still
    running then is given two more minutes."""
    try:
        farm.start()
    except AssertionError as e:
        if "did not answer" not in str(e) or farm.process is None \
                or farm.process.poll() is not None:
            raise
        wait_for("the farm's first answer", lambda: _healthy(farm.url), seconds=120)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def wait_for(what: str, check: Callable[[], Any], seconds: float = 60) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {seconds} s")


def submit(farm: RunningFarm, manifest: str, token: str | None = None,
           tags: list[str] | None = None) -> dict[str, Any]:
    r = farm.request("POST", "/api/v1/jobs", token, json={"manifest": manifest,
                                                           "tags": tags or []})
    assert r.status_code == 201, r.text
    job: dict[str, Any] = r.json()
    return job


class Machine:
    """A builder's machine: what it was given, and the runner it becomes."""

    def __init__(self, create: dict[str, Any]) -> None:
        given = json.loads(base64.b64decode(create["user_data"]))
        assert set(given) == {"server", "enroll_token"}, given
        self.server: str = given["server"]
        self.enroll_token: str = given["enroll_token"]
        self.runner_token = ""
        self.runner_id = 0
        self.name = ""

    def enroll(self, token: str | None = None) -> httpx.Response:
        return httpx.post(f"{self.server}/api/v1/builders/enroll",
                          json={"token": token or self.enroll_token}, timeout=30)

    def join(self) -> dict[str, Any]:
        """Enroll, then register as the runner the enrollment names."""
        r = self.enroll()
        assert r.status_code == 201, r.text
        enrolled: dict[str, Any] = r.json()
        self.runner_token, self.name = enrolled["runner_token"], enrolled["name"]
        r = self.call("POST", "/api/v1/runners", json={
            "name": self.name, "arch": enrolled["arch"], "images": enrolled["images"]})
        assert r.status_code == 201, r.text
        self.runner_id = r.json()["id"]
        return enrolled

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, f"{self.server}{path}", timeout=90, headers={
            "Authorization": f"Bearer {self.runner_token}"}, **kwargs)

    def claim(self, wait: float = 0) -> httpx.Response:
        return self.call("POST", f"/api/v1/runners/{self.runner_id}/claim",
                         json={"wait": wait})
