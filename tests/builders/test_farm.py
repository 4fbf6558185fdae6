"""Builders of a real farm (``nixfarm up``) over HTTP, with the fake Vultr API: the
autoscaler creates a machine for a queued job, the machine enrolls and builds, the
farm destroys it; the API and the CLI show it all; and what a stop of the server does
to its builders."""

from __future__ import annotations

import json
from pathlib import Path

from tests.builders.conftest import manifest, pool
from tests.builders.fakevultr import FakeVultr
from tests.builders.farm import Machine, builder_farm, start, submit, wait_for


def test_a_builder_from_queue_to_destroyed(tmp_path: Path, vultr: FakeVultr) -> None:
    with builder_farm(tmp_path, vultr, [pool(caches=[], idle_timeout_seconds=600)]) as farm:
        job = submit(farm, manifest())
        [create] = wait_for("a create request", vultr.creates)
        assert create["ipxe_chain_url"].startswith(f"{farm.url}/builders/")
        # "creating" until the provider's answer is recorded, which may come just after
        # the request reached it.
        wait_for("the builder booting", lambda: [
            b["state"] for b in farm.get("/api/v1/builders").json()] == ["booting"])
        builders = farm.get("/api/v1/builders").json()
        wait_for("the machine's address", lambda: farm.get(
            f"/api/v1/builders/{builders[0]['id']}").json()["ip"])

        machine = Machine(create)
        enrolled = machine.join()
        assert enrolled["server"] == farm.url and enrolled["pool"] == "vx"
        # Its console, as its bootstrap ships it, on its page for an admin.
        bid = enrolled["builder_id"]
        r = machine.call("PUT", f"/api/v1/builders/{bid}/console/0",
                         content=b"[    0.000000] Linux version 6.1\nnixfarm: enrolled <ok>\n")
        assert r.status_code == 204, r.text
        r = machine.call("PUT", f"/api/v1/builders/{bid}/console/1", content=b"second chunk\n")
        assert r.status_code == 204, r.text
        whole = farm.get(f"/api/v1/builders/{bid}/console")
        assert whole.text.endswith("<ok>\nsecond chunk\n"), whole.text
        size = int(whole.headers["X-Console-Size"])
        assert size == len(whole.content)
        part = farm.get(f"/api/v1/builders/{bid}/console", params={"offset": size - 8})
        assert part.content == b"d chunk\n" and part.headers["X-Console-Size"] == str(size)
        page = farm.get("/runners")
        assert page.status_code == 200 and f'href="/runners/builders/{bid}"' in page.text
        assert "ready" in page.text, page.text
        assert f'href="/runners/builders/{bid}"' in farm.get("/").text  # the home page too
        page = farm.get(f"/runners/builders/{bid}")
        assert page.status_code == 200, page.text
        assert "nixfarm: enrolled &lt;ok&gt;" in page.text  # escaped, as printed
        assert '<meta http-equiv="refresh"' in page.text  # live while it runs
        assert "<td>enroll</td>" in page.text
        assert farm.get(f"/runners/builders/{bid}", token="").status_code == 401
        assert farm.get("/runners/builders/999").status_code == 404
        r = machine.claim(wait=10)
        assert r.status_code == 200 and r.json()["job_id"] == job["id"], r.text
        r = machine.call("POST", f"/api/v1/runners/{machine.runner_id}/jobs/{job['id']}/"
                         "heartbeat", json={"wait": 0})
        assert r.status_code == 200, r.text
        r = machine.call("POST", f"/api/v1/runners/{machine.runner_id}/jobs/{job['id']}/"
                         "finish", json={"status": "success"})
        assert r.status_code == 200, r.text

        wait_for("the machine's deletion", lambda: vultr.calls("DELETE"))
        assert vultr.live() == []
        shown = farm.get(f"/api/v1/builders/{enrolled['builder_id']}").json()
        assert shown["state"] == "destroyed"
        page = farm.get(f"/runners/builders/{bid}")
        assert "destroyed" in page.text and 'http-equiv="refresh"' not in page.text
        assert [d["action"] for d in reversed(shown["decisions"])] == [
            "create", "enroll", "destroy"]
        # Its credential went with it.
        assert machine.claim().status_code == 401

        # The CLI shows builders, one builder's decisions, and pools.
        listed = json.loads(farm.cli("builder", "list", "--all", "--json").stdout)
        assert [b["state"] for b in listed] == ["destroyed"]
        shown_text = farm.cli("builder", "show", str(enrolled["builder_id"])).stdout
        assert f"its job {job['id']} ended success" in shown_text
        pools = json.loads(farm.cli("pool", "list", "--json").stdout)
        assert [(p["name"], p["builders"], p["queued"]) for p in pools] == [("vx", 0, 0)]
        assert "vc2-1c-1gb" in farm.cli("pool", "list", "--decisions").stdout

        # `builder destroy` destroys a builder now.
        submit(farm, manifest())
        wait_for("a second create", lambda: len(vultr.creates()) == 2)
        second = farm.get("/api/v1/builders").json()[0]
        done = farm.cli("builder", "destroy", str(second["id"]))
        assert "destroyed" in done.stdout
        assert vultr.live() == [] or all(
            i["id"] != second["instance_id"] for i in vultr.live())
        missing = farm.cli("builder", "show", "999", check=False)
        assert missing.returncode == 2 and "There is no builder 999." in missing.stderr


def test_a_stopping_server_destroys_idle_builders_and_keeps_busy_ones(
        tmp_path: Path, vultr: FakeVultr) -> None:
    pools = [pool(max_instances=2, caches=[], idle_timeout_seconds=600)]
    # A long lease: the busy machine cannot heartbeat while the server is down, and on
    # a loaded machine a restart can outlast the default 30 s (its job would then be
    # queued again, and the builder destroyed as its job left it).
    with builder_farm(tmp_path, vultr, pools, lease_seconds=600) as farm:
        job = submit(farm, manifest())
        submit(farm, manifest())
        creates = wait_for("two creates", lambda: len(vultr.creates()) == 2
                           and vultr.creates())
        busy, idle = Machine(creates[0]), Machine(creates[1])
        busy.join()
        idle.join()
        r = busy.claim(wait=10)
        assert r.status_code == 200 and r.json()["job_id"] == job["id"], r.text
        # ``idle`` enrolled but claims nothing: it has no job when the server stops.
        farm.stop()
        left = {i["label"] for i in vultr.live()}
        assert busy.name in left and idle.name not in left, left
        stopped = [d for d in vultr.calls("DELETE")]
        assert len(stopped) == 1

        # The next start picks the busy builder up: its job ends, the builder goes.
        start(farm)
        r = busy.call("POST", f"/api/v1/runners/{busy.runner_id}/jobs/{job['id']}/finish",
                      json={"status": "success"})
        assert r.status_code == 200, r.text
        wait_for("the busy builder destroyed", lambda: busy.name not in {
            i["label"] for i in vultr.live()})
