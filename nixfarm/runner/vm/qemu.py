"""Command lines of a job's VM: qemu, virtiofsd, and the bubblewrap around each.

Both run as an unprivileged host user (nobody when the runner is root), each in
its own bubblewrap with every namespace unshared. When the job has network, qemu's
namespace is connected outward by slirp4netns without the host's loopback
(``sandbox.network``): qemu's user-mode networking makes its sockets from there, so
the guest's 10.0.2.2 is that namespace's empty loopback, never the runner's. Their
file system is the host's /usr (for their own binaries and
libraries), a minimal /dev, and the job's files only:

- qemu sees no file of the job at all: kernel, initramfs, disk image and the job's
  disk (``vm.disk``) come in as open file descriptors (``/dev/fd/N``), the agent's
  ports and virtiofsd's socket as connected sockets (``-chardev socket,fd=N``).
- virtiofsd sees /export: ``root/`` (the image's tree, read-only: a root directory,
  or a Nix root with exactly its closure at ``root/nix/store``) and ``xfer/`` (the
  exchange directory of ``channel``, writable).

The machine is ``microvm``: no PCI, no firmware to speak of, virtio over MMIO
(modern virtio: vhost-user-fs rejects legacy devices), guest RAM in a shared memfd
(vhost-user needs it), direct kernel boot, ``-no-reboot`` so that a guest that
powers off or panics ends qemu.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nixfarm.runner.sandbox.base import DiskImage, NixClosure, RootDir, SandboxSpec
from nixfarm.runner.vm import disk as job_disk
from nixfarm.runner.vm.accel import Accelerator

QEMU = "qemu-system-x86_64"
VIRTIOFSD = "/usr/lib/qemu/virtiofsd"
#: Guest RAM when the spec sets no memory limit.
DEFAULT_MEMORY = 2 * 1024**3
#: vCPUs of a VM whose job sets no CPU limit: two where the host has them. Under TCG
#: (one host thread per vCPU) a guest with two boots to its first task line ~0.5 s
#: sooner than with one (the kernel's initcalls and our module loading, init and the
#: runner's first puts overlap: 2.83-2.90 s against 3.33-3.51 s, bench/vm_bench.py on a
#: quiet machine), and a job gets the parallelism a bwrap job has on a small host;
#: each vCPU more costs its bring-up at every boot.
DEFAULT_VCPUS = min(2, os.cpu_count() or 1)


#: The guest kernel's options, whatever the job. No PCI bus and no keyboard controller
#: on a microvm: don't look for them. No self-tests of the crypto algorithms at boot:
#: under TCG they are a fifth of the kernel's boot, in a guest that lives for one job.
KERNEL_OPTIONS = ("console=ttyS0", "quiet", "panic=-1", "pci=off", "i8042.noaux",
                  "i8042.nokbd", "i8042.nopnp", "random.trust_cpu=on", "cryptomgr.notests")


@dataclass(frozen=True)
class Fds:
    """Descriptors qemu inherits, as their numbers."""

    kernel: int
    initrd: int
    virtiofs: int
    control: int
    output: int
    disk: int | None = None
    #: One virtio-serial port per shell session the guest can hold at once
    #: (``nixfarm.sh0``, ...; see ``vm.telnet``).
    shells: tuple[int, ...] = ()
    #: The port of the guest's Nix relay (``nixfarm.nix``, ``vm.nixguest``), if any.
    nix: int | None = None
    #: The job's disk (``vm.disk``): everything the job writes, within its quota.
    scratch: int | None = None


def host_dirs() -> list[str]:
    """bwrap arguments showing the host's /usr (and /bin, /lib... as on the host)."""
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    return args


def bwrap(*, extra: Sequence[str] = ()) -> list[str]:
    """bwrap's options for one of the VM's processes (the program follows ``--``).

    """
    return ["--unshare-all", "--die-with-parent",
            "--new-session", *host_dirs(), "--dev", "/dev", "--proc", "/proc",
            "--tmpfs", "/tmp", "--tmpfs", "/var/tmp", "--chdir", "/", *extra]  # fmt: skip


def virtiofsd_bwrap(spec: SandboxSpec, xfer: Path, root: Sequence[str] = (),
                    source: Path | None = None) -> list[str]:
    """bwrap options building /export for virtiofsd (see the module docstring).

    virtiofsd is root in its user namespace (mapped to the unprivileged host user),
    with capabilities only there: it needs them to build its own inner sandbox.
    ``root``: options that build /export/root instead (a VM with Nix: ``nixguest``).
    ``source``: where the image's tree is to be found instead of its path (``vm.idmap``).
    """
    args = ["--uid", "0", "--gid", "0", "--cap-add", "ALL", "--tmpfs", "/export"]
    image = spec.image
    if root:
        args += root
    elif isinstance(image, RootDir):
        args += ["--ro-bind", str(source or image.path), "/export/root"]
    elif isinstance(image, NixClosure):
        args += ["--ro-bind", str(source or image.root), "/export/root",
                 "--tmpfs", "/export/root/nix/store"]  # fmt: skip
        for path in image.store_paths:
            args += ["--ro-bind", path, f"/export/root{path}"]
        args += ["--remount-ro", "/export/root/nix/store"]
    args += ["--bind", str(xfer), "/export/xfer"]
    return bwrap(extra=args)


def virtiofsd_args(fd: int) -> list[str]:
    """cache=always: the guest keeps what it looked up and read. The image never changes
    under a VM, and the host only ever creates new files in xfer/ (``VmSandbox._write``):
    nothing the guest has cached goes stale, and each program a task starts costs no
    round trips to virtiofsd for its path lookups (under TCG a run took ~3x longer)."""
    return [VIRTIOFSD, f"--fd={fd}", "-o", "source=/export", "-o", "sandbox=namespace",
            "-o", "cache=always", "--thread-pool-size=4"]  # fmt: skip


def qemu_args(spec: SandboxSpec, accel: Accelerator, fds: Fds,
              tsc_khz: int | None = None) -> list[str]:
    """qemu's command line for ``spec`` (see the module docstring)."""
    memory = max((spec.memory_limit or DEFAULT_MEMORY) // 1024**2, 128)
    vcpus = max(1, math.ceil(spec.cpu_limit)) if spec.cpu_limit else DEFAULT_VCPUS
    cmdline = [*KERNEL_OPTIONS,
               "nixfarm.root=" + ("disk" if isinstance(spec.image, DiskImage) else "share"),
               f"nixfarm.net={int(spec.network)}", f"nixfarm.tmp={spec.tmp_size}"]  # fmt: skip
    if fds.nix is not None:
        cmdline.append("nixfarm.nix=1")
    if accel.name == "tcg" and tsc_khz:
        # Under TCG the kernel's TSC calibration against the PIT sometimes never ends.
        cmdline += [f"tsc_early_khz={tsc_khz}", "tsc=reliable"]
    args = [
        QEMU, "-M", f"microvm,accel={accel.name}", "-cpu", "host" if accel.name == "kvm" else "max",
        "-smp", str(vcpus), "-m", f"{memory}M",
        "-object", f"memory-backend-memfd,id=mem,size={memory}M,share=on",
        "-machine", "memory-backend=mem",
        "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none",
        "-no-reboot", "-serial", "stdio", "-global", "virtio-mmio.force-legacy=false",
        "-kernel", f"/dev/fd/{fds.kernel}", "-initrd", f"/dev/fd/{fds.initrd}",
        "-append", " ".join(cmdline),
        "-chardev", f"socket,id=vfs,fd={fds.virtiofs}",
        "-device", "vhost-user-fs-device,chardev=vfs,tag=nixfarm",
        "-device", "virtio-serial-device",
        "-chardev", f"socket,id=ctl,fd={fds.control}",
        "-device", "virtserialport,chardev=ctl,name=nixfarm.ctl",
        "-chardev", f"socket,id=out,fd={fds.output}",
        "-device", "virtserialport,chardev=out,name=nixfarm.out",
    ]  # fmt: skip
    for n, fd in enumerate(fds.shells):
        args += ["-chardev", f"socket,id=sh{n},fd={fd}",
                 "-device", f"virtserialport,chardev=sh{n},name=nixfarm.sh{n}"]
    if fds.nix is not None:
        args += ["-chardev", f"socket,id=nix,fd={fds.nix}",
                 "-device", "virtserialport,chardev=nix,name=nixfarm.nix"]
    if isinstance(spec.image, DiskImage) and fds.disk is not None:
        # Read-only: the guest lays an overlay on the job's disk over it (guest/init).
        args += ["-drive", f"file=/dev/fd/{fds.disk},format={spec.image.format},if=none,"
                 "id=root,readonly=on",
                 "-device", f"virtio-blk-device,drive=root,serial={job_disk.ROOT_SERIAL}"]
    if fds.scratch is not None:
        # Thrown away with the VM: flushes need not reach the host's disk.
        args += ["-drive", f"file=/dev/fd/{fds.scratch},format=raw,if=none,id=scratch,"
                 "cache=unsafe",
                 "-device", f"virtio-blk-device,drive=scratch,serial={job_disk.SCRATCH_SERIAL}"]
    if spec.network:
        args += ["-netdev", "user,id=net0,net=10.0.2.0/24,host=10.0.2.2,dns=10.0.2.3",
                 "-device", "virtio-net-device,netdev=net0"]  # fmt: skip
    return args


def host_tsc_khz() -> int | None:
    """The host's TSC rate (TCG's guest TSC is the host's), from /proc/cpuinfo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "cpu MHz":
                return int(float(value) * 1000)
    except (OSError, ValueError):
        pass
    return None
