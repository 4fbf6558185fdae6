"""The guest's kernel and initramfs, made once per runner and kept in its directory.

The kernel is Debian's cloud kernel (``linux-image-cloud-amd64``: virtio drivers,
small, quick to boot), fetched from Debian's package registry with ``apt-get
download`` and unpacked with ``dpkg-deb -x`` into ``<vm dir>/kernel/<version>/``.
Nothing is installed on the host: the package never reaches dpkg's database, /boot
or /lib/modules.

The initramfs is ours: Debian's static busybox, the modules the guest needs (and
what they depend on, see ``modules``), our ``init`` and the guest agent (both in
``guest/``), written as a cpio archive (``cpio``). Its file name carries a hash of
everything in it, so a changed agent makes a new one and never a stale mix.

    boot = await boot_files(vm_dir)      # BootFiles(kernel, initrd, version)
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from nixfarm.errors import NixfarmError
from nixfarm.runner.vm.cpio import CpioWriter
from nixfarm.runner.vm.modules import ModuleError, load_order, module_index
from nixfarm.runner.vm.vmlinux import direct_kernel

PACKAGE = "linux-image-cloud-amd64"
GUEST = Path(__file__).resolve().parent / "guest"
BUSYBOX = Path("/bin/busybox")
#: virtio over MMIO (microvm), the agent's ports, virtiofs, the network card and
#: disks (the job's own disk, and a disk image), and overlayfs (a disk image under the
#: job's disk). Each module costs boot time under TCG: nothing more.
MODULES = ("virtio_mmio", "virtio_console", "virtiofs", "virtio_net", "virtio_blk",
           "overlay")
#: What only a job with network, or on a disk image, needs: init skips them otherwise.
#: (virtio_blk is every VM's: the job's disk is one.)
NEEDED_FOR = {"net": ("virtio_net",), "disk": ("overlay",)}
#: How a signed module ends (``scripts/sign-file``): signature, a 12-byte trailer whose
#: last 4 bytes are the signature's length (big-endian), then this marker.
SIGNED = b"~Module signature appended~\n"
_VERSION = re.compile(r"^linux-image-(\d[\w.+-]*)$")
_locks: dict[Path, asyncio.Lock] = {}
_made: dict[tuple[Path, str], BootFiles] = {}


@dataclass
class KernelError(NixfarmError):
    """The kernel could not be fetched or the initramfs not made; ``message`` says why."""


@dataclass(frozen=True)
class BootFiles:
    kernel: Path
    initrd: Path
    #: The kernel's release, such as ``6.1.0-57-cloud-amd64``.
    version: str


async def boot_files(vm_dir: Path, package: str = PACKAGE) -> BootFiles:
    """The kernel (fetched on first use) and our initramfs for it, under ``vm_dir``.

    Offline, a kernel fetched before is used. Raises KernelError saying what failed.
    Once made, the answer is remembered for the life of the process: a job's boot
    does not ask apt again.
    """
    key = (vm_dir, package)
    async with _locks.setdefault(key[0], asyncio.Lock()):
        made = _made.get(key)
        if made is None or not await asyncio.to_thread(_present, made):
            tree = await kernel_tree(vm_dir / "kernel", package)
            made = _made[key] = await asyncio.to_thread(_initramfs, tree, vm_dir / "initrd")
        return made


async def kernel_tree(kernels: Path, package: str = PACKAGE) -> Path:
    """The unpacked kernel package under ``kernels`` (fetched now if apt has a newer one)."""
    try:
        version = await _candidate(package)
    except KernelError:
        present = await asyncio.to_thread(_fetched, kernels)
        if present:
            return present[-1]  # no registry now: the last kernel we fetched
        raise
    tree = kernels / version
    if tree in await asyncio.to_thread(_fetched, kernels):
        return tree
    await asyncio.to_thread(kernels.mkdir, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fetch-", dir=kernels) as scratch:
        await _command(["apt-get", "download", f"linux-image-{version}"], Path(scratch))
        debs = await asyncio.to_thread(lambda: list(Path(scratch).glob("*.deb")))
        if len(debs) != 1:
            raise KernelError(f"apt-get download left {len(debs)} packages, not one.")
        unpacked = Path(scratch) / "tree"
        await _command(["dpkg-deb", "-x", str(debs[0]), str(unpacked)], Path(scratch))
        await asyncio.to_thread(_settle, unpacked, tree)
    return tree


def _fetched(kernels: Path) -> list[Path]:
    return sorted(p for p in kernels.glob("*") if (p / "ready").exists())


def _settle(unpacked: Path, tree: Path) -> None:
    if not list(unpacked.glob("boot/vmlinuz-*")):
        raise KernelError(f"The package for {tree.name} holds no boot/vmlinuz-*.")
    (unpacked / "ready").touch()
    shutil.rmtree(tree, ignore_errors=True)
    unpacked.rename(tree)


async def _candidate(package: str) -> str:
    """The kernel release the metapackage ``package`` depends on, per apt's lists."""
    text = await _command(["apt-cache", "depends", package], Path("/"))
    for line in text.splitlines():
        key, _, value = line.strip().partition(": ")
        match = _VERSION.match(value.strip())
        if key == "Depends" and match:
            return match.group(1)
    raise KernelError(f"apt knows no kernel that {package} depends on (apt-get update?).")


async def _command(argv: list[str], cwd: Path) -> str:
    if shutil.which(argv[0]) is None:
        raise KernelError(f"Fetching the guest kernel needs {argv[0]}, which is not installed.")
    process = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "LC_ALL": "C"},
    )  # fmt: skip
    output, _ = await process.communicate()
    text = output.decode(errors="replace")
    if process.returncode != 0:
        last = text.strip().splitlines()[-1:] or ["no output"]
        raise KernelError(f"{' '.join(argv)} failed: {last[0]}")
    return text


def _initramfs(tree: Path, initrds: Path) -> BootFiles:
    bzimage = sorted(tree.glob("boot/vmlinuz-*"))[-1]
    version = bzimage.name.removeprefix("vmlinuz-")
    kernel = direct_kernel(bzimage)
    try:
        index = module_index(tree / "lib/modules" / version)
        order = load_order(MODULES, index)
        only = {need: [name for name in order if name not in load_order(
                    [m for m in MODULES if m not in wanted], index)]
                for need, wanted in NEEDED_FOR.items()}  # fmt: skip
    except ModuleError as e:
        raise KernelError(f"Kernel {version}: {e.message}") from e
    if not BUSYBOX.is_file():
        raise KernelError("The guest needs Debian's busybox-static at /bin/busybox.")
    files = {
        "init": ((GUEST / "init").read_bytes(), 0o755),
        "agent": ((GUEST / "agent").read_bytes(), 0o644),
        "bin/busybox": (BUSYBOX.read_bytes(), 0o755),
        **{f"lib/modules/{name}.ko": (unsigned(index[name].read_bytes()), 0o644)
           for name in order},
        "lib/modules/order": ("".join(f"{name}\n" for name in order).encode(), 0o644),
        **{f"lib/modules/{need}": ("".join(f"{name}\n" for name in names).encode(), 0o644)
           for need, names in only.items()},
    }
    digest = hashlib.sha256(version.encode())
    for name in sorted(files):
        digest.update(f"\0{name}\0{files[name][1]:o}\0".encode() + files[name][0])
    initrd = initrds / f"initrd-{version}-{digest.hexdigest()[:16]}.cpio"
    if not initrd.exists():
        initrds.mkdir(parents=True, exist_ok=True)
        partial = initrd.with_name(f".{initrd.name}.{os.getpid()}")
        with partial.open("wb") as out:
            archive = CpioWriter(out)
            for directory in ("bin", "dev", "lib", "lib/modules", "proc", "sys"):
                archive.directory(directory)
            archive.char_device("dev/console", 5, 1)
            for name, (data, mode) in files.items():
                archive.file(name, data, mode)
            archive.close()
        partial.rename(initrd)
    return BootFiles(kernel=kernel, initrd=initrd, version=version)


def unsigned(module: bytes) -> bytes:
    """``module`` without its signature: the guest kernel then skips an RSA check per
    module, ~10 of them at each boot under TCG. Nothing is lost: the initramfs is ours,
    its hash in its name, made from the package apt verified (the kernel does not
    insist on signatures, and only taints itself)."""
    if not module.endswith(SIGNED) or len(module) < len(SIGNED) + 12:
        return module
    trailer = len(module) - len(SIGNED) - 12
    length = int.from_bytes(module[trailer + 8 : trailer + 12], "big")
    return module[: max(trailer - length, 0)]


def _present(made: BootFiles) -> bool:
    return made.kernel.exists() and made.initrd.exists()
