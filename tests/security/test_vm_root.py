"""A VM job's root is writable, and what it writes there dies with it (issue 9, root
filesystems): the image's tree is the lower layer of an overlay whose upper layer is
on the job's disk; the host's image directory and the store are never written.

The attacker is the guest's root (what a catalogue image's passwordless sudo gives
any job): it changes /etc and /usr, edits and removes the image's files, and tries
to write through the share and the store. The next VM on the same image sees none
of it, nor does the host's directory; and what it writes is held to the job's disk
quota. Two boots (TCG is slow), on a copy of the demo catalogue image.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

import nixfarm.demo
from nixfarm.runner.roots import Catalogue, Images
from nixfarm.runner.sandbox import SandboxSpec
from nixfarm.runner.sandbox.processes import Lines
from nixfarm.runner.sandbox.vm import NOBODY, VmSandbox
from nixfarm.runner.vm import idmap, qemu

pytestmark = [pytest.mark.slow]

#: Where the VM tests keep the guest kernel between runs (tests/runner/vm/conftest.py).
VM_DIR = Path(tempfile.gettempdir()) / f"nixfarm-test-vm-{os.getuid()}" / "vm"
QUOTA = 16 * 1024**2


@pytest.fixture(scope="module")
def image_root() -> Iterator[Path]:
    """A copy of the demo catalogue image (root's files, as a root runner's are)."""
    where = Path(tempfile.mkdtemp(prefix="nixfarm-sec-vm-root-"))
    where.chmod(0o755)
    images = Images(Catalogue(where / "catalogue"), nix_source=nixfarm.demo.path(),
                    nix_options={"substituters": ""})
    demo = anyio.run(images.catalogue.root, images.catalogue.find("demo/latest"))
    root = where / "root"
    shutil.copytree(demo, root, symlinks=True)
    yield root
    shutil.rmtree(where)


@pytest.fixture
def state_root() -> Iterator[Path]:
    state = Path(tempfile.mkdtemp(prefix="nixfarm-sec-vm-state-"))
    state.chmod(0o755)
    yield state
    shutil.rmtree(state, ignore_errors=True)


def digest(root: Path) -> str:
    """Every entry's path, mode, owner, times and content (or link target)."""
    h = hashlib.sha256()
    for directory, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in [directory, *(os.path.join(directory, f) for f in sorted(files))]:
            info = os.lstat(name)
            h.update(f"{name} {info.st_mode} {info.st_uid} {info.st_gid} {info.st_size} "
                     f"{info.st_mtime_ns}\n".encode())
            if os.path.islink(name):
                h.update(os.readlink(name).encode())
            elif os.path.isfile(name):
                h.update(Path(name).read_bytes())
    return h.hexdigest()


async def as_root(vm: VmSandbox, script: str) -> tuple[int, list[str]]:
    lines: list[str] = []
    status, _ = await vm._run(["/run/nixfarm/sh", "-c", script], Lines(lines.append), uid=0,
                              cwd="/", timeout=120)
    return status, lines


ATTACK = r"""
set -x
echo written > /etc/x && echo written > /usr/x && echo written > /x
echo evil >> /etc/passwd && rm /etc/hosts && chmod 4777 /etc/group
mkdir -p /usr/local/lib && echo lib > /usr/local/lib/y
grep -c evil /etc/passwd; cat /etc/x /usr/x; test -e /etc/hosts || echo hosts-gone
store=$(ls -d /nix/store/*busybox* | head -1)
for f in "$store/x" /run/nixfarm/private/share/root/etc/passwd /run/nixfarm/private/share/root/z; do
  if echo evil >> "$f"; then echo "wrote $f"; fi
done
if mount -o remount,rw /nix/store && touch "$store/y"; then echo "wrote the store"; fi
if mount -o remount,rw /run/nixfarm/private/share && touch /run/nixfarm/private/share/root/w
then echo "wrote the share"; fi
"""


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_vms_root_writes_die_with_it_and_never_reach_the_image(
        image_root: Path, state_root: Path, anyio_backend: str) -> None:
    before = digest(image_root)
    spec = SandboxSpec(rootfs=image_root, memory_limit=256 * 1024**2, home_size=QUOTA)
    async with VmSandbox(spec, vm_dir=VM_DIR, state_root=state_root) as vm:
        status, lines = await as_root(vm, ATTACK)
        said = [line for line in lines if not line.startswith("+")]
        assert said[:4] == ["1", "written", "written", "hosts-gone"], lines
        assert not [line for line in said if line.startswith("wrote")], lines
        # The root's changes are on the job's disk: held to its quota.
        status, lines = await as_root(vm, "dd if=/dev/zero of=/etc/big bs=1M count=32")
        assert status != 0 and any("No space left" in line for line in lines), lines
    async with VmSandbox(spec, vm_dir=VM_DIR, state_root=state_root) as vm:
        status, lines = await as_root(
            vm, "ls /etc/x /usr/x /x /usr/local /etc/big 2>&1; grep -c evil /etc/passwd; "
                "cat /etc/hosts >/dev/null && stat -c %a /etc/group")
        assert lines[:5] == [f"ls: {p}: No such file or directory" for p in
                             ("/etc/x", "/usr/x", "/x", "/usr/local", "/etc/big")], lines
        assert lines[5:] == ["0", "644"], lines
    assert digest(image_root) == before


# In virtiofsd's place (nobody, root in a user namespace of its own, in bwrap): the
# image's files are its own (O_NOATIME passes, owner 0), and nothing can be changed.
_PROBE = r"""
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open("/r/etc/passwd", os.O_RDONLY | os.O_NOATIME)
print("owner", os.fstat(fd).st_uid, os.fstat(fd).st_gid)
tries = {
    "chmod": lambda: os.chmod("/r/etc/passwd", 0o666),
    "chown": lambda: os.chown("/r/etc/passwd", 0, 0),
    "utime": lambda: os.utime("/r/etc/passwd", (0, 0)),
    "write": lambda: os.open("/r/etc/passwd", os.O_WRONLY),
    "create": lambda: os.open("/r/etc/new", os.O_WRONLY | os.O_CREAT, 0o644),
    "unlink": lambda: os.unlink("/r/etc/hosts"),
    "setxattr": lambda: os.setxattr("/r/etc/passwd", "user.x", b"x"),
}
for name, attempt in tries.items():
    try:
        attempt()
        print(name, "done")
    except OSError as e:
        print(name, errno.errorcode[e.errno])
MS_REMOUNT, MS_BIND = 32, 4096
if libc.mount(None, b"/r", None, MS_REMOUNT | MS_BIND, None) != 0:
    print("remount", errno.errorcode[ctypes.get_errno()])
else:
    print("remount done")
"""


def test_virtiofsd_owns_the_image_it_serves_and_can_change_none_of_it(
        image_root: Path) -> None:
    before = digest(image_root)
    where = Path(tempfile.mkdtemp(prefix="nixfarm-sec-idmap-"))
    try:
        where.chmod(0o711)
        target = where / "image"
        target.mkdir(mode=0o755)
        nobody = str(NOBODY)
        done = subprocess.run(
            [*idmap.command(NOBODY, [(image_root, target)]), "setpriv", "--reuid", nobody,
             "--regid", nobody, "--clear-groups", "--no-new-privs", "bwrap",
             *qemu.bwrap(extra=["--uid", "0", "--gid", "0", "--ro-bind", str(target), "/r"]),
             "--", "python3", "-I", "-S", "-c", _PROBE],
            capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split("\n") == [
            "owner 0 0", "chmod EROFS", "chown EROFS", "utime EROFS", "write EROFS",
            "create EROFS", "unlink EROFS", "setxattr EROFS", "remount EPERM", ""], done.stdout
        # The mount was only ever in virtiofsd's namespaces: not the host's.
        assert str(target) not in Path("/proc/self/mountinfo").read_text()
        assert os.listdir(target) == []
    finally:
        shutil.rmtree(where)
    assert digest(image_root) == before
