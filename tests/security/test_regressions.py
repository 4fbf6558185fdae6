"""What the sandbox held before issue 12, kept holding: host files and processes, root,
privileges, fork bombs, /tmp, nothing kept between jobs, and no Nix injected through
package names."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.security.conftest import Tenant
from tests.security.test_store import attempt, statuses


@pytest.fixture
def host_marker() -> Iterator[Path]:
    marker = Path(f"/tmp/nixfarm-host-marker-{uuid.uuid4().hex}")
    marker.write_text("host only\n")
    yield marker
    marker.unlink()


def test_host_files_processes_and_privileges_stay_out_of_reach(
        attacker: Tenant, host_marker: Path) -> None:
    mallory = attacker
    script = (attempt("marker", f"cat {host_marker}")
              + attempt("shadow", "cat /etc/shadow")
              + attempt("etc", "touch /etc/evil")
              + attempt("store", "touch /nix/store/evil")
              + attempt("root", "test $(id -u) = 0")
              + attempt("nnp", "grep -q 'NoNewPrivs:.1' /proc/self/status")
              + attempt("caps", "grep -q 'CapEff:.0000000000000000' /proc/self/status")
              + "echo processes=$(ls -d /proc/[0-9]* | wc -l)\n"
              + "cat /proc/[0-9]*/cmdline | tr '\\0' ' '; echo\n")
    job, log = mallory.run({"probe": script})
    assert job["status"] == "success", log
    found = statuses(log)
    assert found["marker"] != 0 and "host only" not in log
    assert found["shadow"] != 0 and found["etc"] != 0 and found["store"] != 0
    assert found["root"] != 0
    assert found["caps"] == 0, log
    if mallory.sandbox == "bwrap":  # a guest kernel has threads of its own
        # On the host's kernel no setuid file may make the job root; in a VM the
        # guest's root is inside the VM (catalogue images give `build` sudo).
        assert found["nnp"] == 0, log
        assert found["processes"] < 20, log  # the sandbox's own, not the host's
    assert "nixfarm" not in log.split("processes=")[1]
    assert not Path("/nix/store/evil").exists()


def test_a_fork_bomb_hits_the_process_limit(mallory: Tenant) -> None:
    # After the bomb nothing more can start: the count uses shell builtins only.
    script = ("set +e\n(i=0; while [ $i -lt 600 ]; do sleep 30 & i=$((i+1)); done) "
              "2>/dev/null\nset -- /proc/[0-9]*; echo processes=$#; echo done\n")
    job, log = mallory.run({"bomb": script})
    assert job["status"] == "success", log[-2000:]
    assert "done" in log.splitlines()
    # The job's process limit (512) stopped it short of 700 sleepers.
    assert 400 < statuses(log)["processes"] <= 512, log[-2000:]


def test_nothing_outlives_a_job_and_tmp_is_limited(attacker: Tenant) -> None:
    mallory = attacker
    marker = uuid.uuid4().hex
    job, log = mallory.run({"leave": f"echo {marker} > ~/left\necho {marker} > /tmp/left\n"
                                     "df -k /tmp | tail -1\n"})
    assert job["status"] == "success", log
    if mallory.sandbox == "bwrap":  # a VM's /tmp is in its RAM, which is limited
        assert " 524288 " in log  # /tmp: 512 MiB in memory
    job, log = mallory.run({"look": "cat ~/left /tmp/left 2>&1 || true\n"})
    assert job["status"] == "success", log
    assert marker not in log.replace(f"echo {marker}", "")


def test_package_names_cannot_carry_nix(mallory: Tenant) -> None:
    manifest = ('image: nix\npackages: ["hello; builtins.abort \\"x\\""]\n'
                "tasks:\n  - t: |\n      true\n")
    r = mallory.farm.request("POST", "/api/v1/jobs", mallory.token,
                             json={"manifest": manifest})
    if r.status_code == 201:  # accepted by the manifest's rules: refused at boot
        job = mallory.wait(r.json())
        assert job["status"] == "failed"
        assert "is not a package attribute name" in job["reason"]
    else:
        assert r.status_code in (400, 422), r.text
        assert "hello; builtins.abort" in r.text
