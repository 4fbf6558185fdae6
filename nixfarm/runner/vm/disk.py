"""The job's disk: where everything a job writes in its VM goes, and its size limit.

Without it, a VM's writes would land in its RAM (tmpfs) or in a qemu snapshot file,
bounded by nothing but the host's memory. So each VM gets one more virtio disk,
a sparse raw file of exactly the job's quota (``SandboxSpec.home_size``, the
``jobs.home_bytes`` setting that bounds a bwrap job's home), formatted here with
``mkfs.ext4`` before boot (sparse, no journal, inode tables left uninitialised:
a few hundred kilobytes written, tens of milliseconds). In the guest (``guest/init``)
it holds the build user's home, ``/var/tmp`` and, for a disk image, the upper
layer of an overlay over the image (mounted read-only): apt's writes included.

What this bounds, and how:

- The guest sees ENOSPC when the file system is full, as a bwrap job does on its
  home's tmpfs: writing past the quota fails inside, with a clear errno.
- A raw file cannot grow past its size: whatever the guest does, the host's disk
  holds at most ``size`` bytes of it (it is sparse: only what was written).
- It lives in the VM's state directory and goes with it.

``/tmp`` stays a tmpfs of ``tmp_size`` in the guest's RAM, as in bwrap.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

from nixfarm.runner.sandbox.base import SandboxError

MKFS = "mkfs.ext4"
#: The disk's size when the spec sets no quota: sparse, so only what is written costs.
UNLIMITED = 64 * 1024**3
#: The smallest disk: ext4's own metadata needs room.
SMALLEST = 4 * 1024**2
#: The serial numbers the guest finds its disks by (``/sys/block/vd*/serial``): the
#: order of virtio-mmio devices is not the order of the command line.
ROOT_SERIAL = "nixfarm-root"
SCRATCH_SERIAL = "nixfarm-scratch"


async def make(path: Path, size: int | None, owner: int | None, sandbox: str) -> Path:
    """A new ext4 file system of ``size`` bytes (None: ``UNLIMITED``) in the sparse
    file ``path``, owned by ``owner`` (the host user qemu runs as) when given."""
    if shutil.which(MKFS) is None:
        raise SandboxError(f"The vm sandbox needs {MKFS} (e2fsprogs), which is not installed.",
                           sandbox=sandbox)
    size = max(size if size is not None else UNLIMITED, SMALLEST)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.ftruncate(fd, size)
        if owner is not None:
            os.fchown(fd, owner, owner)
    finally:
        os.close(fd)
    # -m 0: no blocks kept for root, the build user may fill it all. No journal:
    # the disk is thrown away with the VM, it never needs recovering.
    process = await asyncio.create_subprocess_exec(
        MKFS, "-q", "-F", "-m", "0", "-O", "^has_journal", "-L", "nixfarm-job",
        "-E", "lazy_itable_init=1,nodiscard", str(path),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env={"PATH": "/usr/sbin:/sbin:/usr/bin:/bin"})
    output, _ = await process.communicate()
    if process.returncode != 0:
        raise SandboxError(f"Cannot make the job's disk: {MKFS} said "
                           f"{output.decode(errors='replace').strip()[-300:]!r}.",
                           sandbox=sandbox)
    return path
