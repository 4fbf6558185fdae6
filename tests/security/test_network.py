"""Jobs with network get a network namespace of their own (issue 12, point 8): outbound
connections work, the runner's loopback services do not answer, and no user
namespaces can be made inside."""

from __future__ import annotations

import hashlib
import re
import socket
import threading
import uuid
from collections.abc import Iterator

import pytest

from tests.fixtures.farm import RunningFarm
from tests.runner.test_sandbox import host_address
from tests.security.conftest import Tenant, make_farm, start_runner, stop_runner, tenant
from tests.security.test_store import BUSYBOX, attempt, statuses


@pytest.fixture(scope="module")
def online_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    where = tmp_path_factory.mktemp("sec-online")
    farm = make_farm(where, network=True)
    runner = start_runner(farm, where)
    yield farm
    stop_runner(runner)
    farm.stop()


@pytest.fixture
def servers() -> Iterator[tuple[int, int, list[str]]]:
    """A service on the host's loopback and one on its outside address; who connected."""
    seen: list[str] = []
    sockets = []
    for address in ("127.0.0.1", host_address()):
        server = socket.socket()
        server.bind((address, 0))
        server.listen()
        sockets.append(server)

        def serve(server: socket.socket = server, address: str = address) -> None:
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                seen.append(address)
                conn.sendall(f"hello from {address}\n".encode())
                conn.close()

        threading.Thread(target=serve, daemon=True).start()
    yield sockets[0].getsockname()[1], sockets[1].getsockname()[1], seen
    for server in sockets:
        server.close()


def test_a_job_with_network_reaches_out_but_not_the_runners_loopback(
        online_farm: RunningFarm, servers: tuple[int, int, list[str]]) -> None:
    user: Tenant = tenant(online_farm, "net")
    inside, outside, seen = servers
    farm_port = online_farm.port
    script = (attempt("out", f"echo | nc -w 3 {host_address()} {outside}")
              + attempt("loopback", f"echo | nc -w 3 127.0.0.1 {inside}")
              + attempt("gateway", f"echo | nc -w 3 10.0.2.2 {inside}")
              + attempt("farm", f"echo | nc -w 3 10.0.2.2 {farm_port}")
              + attempt("userns", "unshare -U true")
              + "cat /proc/net/dev\n")
    job, log = user.run({"probe": script})
    assert job["status"] == "success", log
    found = statuses(log)
    assert found["out"] == 0 and f"hello from {host_address()}" in log, log
    assert all(found[name] != 0 for name in ("loopback", "gateway", "farm", "userns")), log
    assert seen == [host_address()]
    interfaces = set(re.findall(r"^\s*([\w-]+):\s+\d", log, re.M))
    assert interfaces == {"lo", "tap0"}, log


def test_a_job_without_network_reaches_nothing(
        attacker: Tenant, servers: tuple[int, int, list[str]]) -> None:
    """In each sandbox: no route out, no host loopback, only ``lo``."""
    inside, outside, seen = servers
    script = (attempt("out", f"echo | nc -w 3 {host_address()} {outside}")
              + attempt("loopback", f"echo | nc -w 3 127.0.0.1 {inside}")
              + "cat /proc/net/dev\n")
    job, log = attacker.run({"probe": script})
    assert job["status"] == "success", log
    found = statuses(log)
    assert found["out"] != 0 and found["loopback"] != 0, log
    assert seen == []
    interfaces = set(re.findall(r"^\s*([\w-]+):\s+\d", log, re.M))
    assert interfaces == {"lo"}, log


#: A fixed-output derivation that calls three listeners and always builds.
FOD_NIX = """\
{ bb, host, inside, outside, marker }:
let b = builtins.storePath bb; in
derivation {
  name = "fetch-${marker}"; system = builtins.currentSystem; builder = "${b}/bin/sh";
  args = [ "-c" ''
    echo fod-${marker} | ${b}/bin/nc -w 3 ${host} ${outside} && echo fod-out=0
    echo fod-${marker} | ${b}/bin/nc -w 3 127.0.0.1 ${inside} || echo fod-loopback=1
    echo fod-${marker} | ${b}/bin/nc -w 3 10.0.2.2 ${inside} || echo fod-gateway=1
    echo x > $out
  '' ];
  outputHashMode = "flat"; outputHashAlgo = "sha256"; outputHash = "@HASH@";
}
"""


def test_fixed_output_builds_of_a_job_with_network_have_only_its_network(
        online_farm: RunningFarm, servers: tuple[int, int, list[str]]) -> None:
    """The daemon that builds them is behind slirp4netns without host loopback, as the
    job is: an outside address answers, the runner's 127.0.0.1 does not."""
    user: Tenant = tenant(online_farm, "fod")
    inside, outside, seen = servers
    marker = uuid.uuid4().hex[:12]
    nix = FOD_NIX.replace("@HASH@", hashlib.sha256(b"x\n").hexdigest())
    script = (f"{BUSYBOX}\ncat > fod.nix <<'EOF'\n{nix}EOF\n"
              f'nix-build fod.nix --argstr bb "$bb" --argstr host {host_address()} '
              f"--argstr inside {inside} --argstr outside {outside} --argstr marker {marker}\n")
    job, log = user.run({"fetch": script})
    assert job["status"] == "success", log
    assert "fod-out=0" in log and "fod-loopback=1" in log and "fod-gateway=1" in log, log
    assert seen == [host_address()]
