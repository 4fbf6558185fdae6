"""Nix inside the bubblewrap sandbox: a host nix-daemon, and a client that sees only its closure."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from nixfarm.runner.nixd import NixDaemon, answers
from nixfarm.runner.roots import Images
from nixfarm.runner.sandbox.base import NixClient, SandboxSpec
from nixfarm.runner.sandbox.bwrap import BwrapSandbox

pytestmark = pytest.mark.anyio


@pytest.fixture
def state_dir() -> Iterator[Path]:
    state = Path(tempfile.mkdtemp(prefix="nixfarm-nixd-"))
    state.chmod(0o755)  # the sandbox's host user (nobody) must reach the socket
    yield state
    shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
async def daemon(state_dir: Path) -> AsyncIterator[NixDaemon]:
    running = NixDaemon(state_dir, {"substituters": ""})
    yield running
    await running.stop()


def read(path: str) -> str:
    return Path(path).read_text()


def check_files(client: NixClient) -> None:
    assert client.files[0] == os.path.realpath(shutil.which("nix") or "")
    assert any(f.endswith("/libnixstore.so") for f in client.files)
    assert ("/usr/bin/nix-build", "nix") in client.links
    assert all(os.path.isfile(f) for f in client.files)


async def run(box: BwrapSandbox, script: str) -> tuple[int, str]:
    lines: list[str] = []
    status = await box.run(["/bin/sh", "-c", script], lines.append, timeout=120)
    return status, "\n".join(lines)


async def test_the_client_builds_through_the_daemon_but_sees_only_its_closure(
        images: Images, daemon: NixDaemon) -> None:
    image = await images.prepare("nix", None, ["coreutils"])
    # A path of the host's store that the job was not given.
    (hello,) = (await images.prepare("nix", None, ["hello"])).outputs
    assert hello not in image.store_paths
    client = await daemon.start()
    assert daemon.socket is not None and answers(daemon.socket)
    marker = os.urandom(6).hex()
    script = f"""
set -e
test ! -e {hello}                       # not in the sandbox...
! nix-store --check-validity {hello}    # ...nor, for the job, in the store
bb=$(readlink -f /bin/busybox | cut -d/ -f1-4)
cat > probe.nix <<EOF
let bb = builtins.storePath "$bb"; in
derivation {{
  name = "probe-{marker}"; system = builtins.currentSystem; builder = "\\${{bb}}/bin/sh";
  args = [ "-c" "echo building {marker}; \\${{bb}}/bin/mkdir \\$out; echo {marker} > \\$out/f" ];
}}
EOF
nix-build probe.nix
test ! -e result/f                      # the output stays in the host's store
nix-store --check-validity result
readlink result
"""
    spec = SandboxSpec(rootfs=image.root, store_paths=image.store_paths, nix_client=client)
    async with BwrapSandbox(spec) as box:
        status, output = await run(box, script)
    assert status == 0, output
    assert f"building {marker}" in output
    out = output.splitlines()[-1]
    assert out.startswith("/nix/store/") and out.endswith(f"-probe-{marker}")
    assert read(f"{out}/f") == f"{marker}\n"

    # Without a client there is no Nix at all.
    plain = SandboxSpec(rootfs=image.root, store_paths=image.store_paths)
    async with BwrapSandbox(plain) as box:
        status, output = await run(box, "command -v nix-build || ls /nix/var")
    assert status != 0, output

    await daemon.stop()
    assert not answers(daemon.socket)


async def test_the_client_is_exactly_the_listed_files(daemon: NixDaemon) -> None:
    check_files(await daemon.start())


async def test_a_daemon_that_died_is_started_again(daemon: NixDaemon) -> None:
    await daemon.start()
    first = daemon.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    with anyio.fail_after(5):
        while daemon.pid is not None:  # noqa: ASYNC110 - the runner notices as it will
            await anyio.sleep(0.01)
    client = await daemon.start()
    assert daemon.pid not in (None, first)
    assert answers(client.socket)
