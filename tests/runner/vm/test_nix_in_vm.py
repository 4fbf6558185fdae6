"""Nix inside a VM against real qemu and a real nix-daemon: the guest builds through
its own proxy, runs what it built, and sees exactly its view of the store (one VM
for the module: TCG boots are slow). What a job must not reach through it is the
security suite's (tests/security/test_store.py, its VM cases)."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from nixfarm.runner.nixd import NixDaemon
from nixfarm.runner.roots import Images, PreparedImage
from nixfarm.runner.sandbox import NixClosure, SandboxSpec
from nixfarm.runner.sandbox.vm import VmSandbox

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

BUSYBOX = "bb=$(readlink -f /bin/busybox | cut -d/ -f1-4)"


def probe_nix(marker: str) -> str:
    """A derivation whose output is a program printing ``ran-<marker>``."""
    return (f"{BUSYBOX}\ncat > probe.nix <<EOF\n"
            'let bb = builtins.storePath "$bb"; in\n'
            f'derivation {{ name = "probe-{marker}"; system = builtins.currentSystem; '
            'builder = "\\${bb}/bin/sh";\n'
            '  args = [ "-c" "\\${bb}/bin/mkdir -p \\$out/bin; printf \'#!\\${bb}/bin/sh'
            f'\\\\necho ran-{marker}\\\\n\' > \\$out/bin/probe; '
            '\\${bb}/bin/chmod +x \\$out/bin/probe" ]; }\nEOF\n')


@pytest.fixture(scope="module")
def daemon_dir() -> Iterator[Path]:
    state = Path(tempfile.mkdtemp(prefix="nixfarm-vm-nixd-"))
    yield state
    shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="module")
async def daemon(daemon_dir: Path) -> AsyncIterator[NixDaemon]:
    running = NixDaemon(daemon_dir, {"substituters": ""})
    yield running
    await running.stop()


@pytest.fixture(scope="module")
async def image(images: Images) -> PreparedImage:
    return await images.prepare("nix", None, ["coreutils", "busybox"])


@pytest.fixture(scope="module")
async def box(image: PreparedImage, daemon: NixDaemon, vm_dir: Path, state_root: Path
              ) -> AsyncIterator[VmSandbox]:
    if os.geteuid() != 0:
        pytest.skip("Nix for jobs needs a root runner")
    spec = SandboxSpec(NixClosure(image.root, image.store_paths),
                       nix_client=await daemon.start(), memory_limit=1024**3)
    async with VmSandbox(spec, vm_dir=vm_dir, state_root=state_root) as vm:
        yield vm


def on_host(path: str) -> bool:
    return os.path.lexists(path)


async def run(box: VmSandbox, script: str) -> tuple[int, str]:
    lines: list[str] = []
    status = await box.run(["/bin/sh", "-c", script], lines.append, timeout=300)
    return status, "\n".join(lines)


async def test_the_guest_builds_and_runs_its_result_and_sees_only_its_view(
        box: VmSandbox, image: PreparedImage) -> None:
    marker = uuid.uuid4().hex[:12]
    # Several clients at once, each with connections of its own, while nix-build
    # (itself more than one connection) builds.
    script = (f"set -e\n{probe_nix(marker)}"
              'for i in 1 2 3; do nix-store --check-validity "$bb" & done\n'
              "nix-build probe.nix\n"
              "wait\n"
              "./result/bin/probe\n"
              "echo OUT $(readlink result)\n"
              "ls /nix/store\n")
    status, output = await run(box, script)
    assert status == 0, output
    assert f"ran-{marker}" in output.splitlines()
    (out,) = [line.split()[1] for line in output.splitlines() if line.startswith("OUT ")]
    assert out.endswith(f"-probe-{marker}")
    # Built on the host, by the runner's daemon; shown in the guest.
    assert on_host(f"{out}/bin/probe")
    proxy = box.nix_proxy
    assert proxy is not None and out in proxy.view.paths
    listed = set(output.splitlines()[output.splitlines().index(f"OUT {out}") + 1:])
    assert set(map(os.path.basename, image.store_paths)) < listed
    assert listed == {os.path.basename(p) for p in proxy.view.paths if on_host(p)}

    # Read-only, like the rest of the image.
    status, output = await run(box, f"touch /nix/store/evil || rm -rf {out}/bin || exit 0; "
                                    "exit 1")
    assert status == 0, output
    assert on_host(f"{out}/bin/probe")

