"""The guest's boot files: Debian's kernel fetched into the runner's directory, our
initramfs (cpio, modules in dependency order), and the accelerator probe."""

from __future__ import annotations

import io
import subprocess
import time
from pathlib import Path

import anyio
import pytest

from nixfarm.runner.sandbox import DiskImage, NixClosure, SandboxError, SandboxSpec
from nixfarm.runner.sandbox.vm import VmSandbox
from nixfarm.runner.vm import accel
from nixfarm.runner.vm.cpio import CpioWriter
from nixfarm.runner.vm.kernel import MODULES, SIGNED, boot_files, unsigned
from nixfarm.runner.vm.modules import ModuleError, load_order, modinfo, module_index
from nixfarm.runner.vm.vmlinux import has_pvh_entry


def listing(archive: bytes) -> list[str]:
    out = subprocess.run(["busybox", "cpio", "-t", "-v"], input=archive, capture_output=True,
                         check=True).stdout.decode()
    return [" ".join(line.split()[i] for i in (0, 5, *range(6, len(line.split()))))
            for line in out.splitlines()]


def test_cpio_archives_read_back_with_the_real_tool() -> None:
    data = io.BytesIO()
    archive = CpioWriter(data)
    archive.directory("dev")
    archive.char_device("dev/console", 5, 1)
    archive.file("init", b"#!/bin/sh\n", 0o755)
    archive.symlink("sh", "init")
    archive.close()
    assert len(data.getvalue()) % 4 == 0
    assert listing(data.getvalue()) == [
        "drwxr-xr-x dev", "crw------- dev/console", "-rwxr-xr-x init", "lrwxrwxrwx sh -> init"]


def test_the_kernel_is_fetched_once_into_our_directory_with_an_initramfs(vm_dir: Path) -> None:
    boot = anyio.run(boot_files, vm_dir)
    assert boot.kernel.is_relative_to(vm_dir / "kernel") and boot.kernel.stat().st_size > 1e6
    assert boot.version.endswith("-cloud-amd64")
    installed = subprocess.run(["dpkg-query", "-W", "-f=${Status}", f"linux-image-{boot.version}"],
                               capture_output=True, text=True)
    assert "installed" not in installed.stdout  # unpacked, never installed
    assert anyio.run(boot_files, vm_dir) == boot

    index = module_index(vm_dir / "kernel" / boot.version / "lib/modules" / boot.version)
    order = load_order(MODULES, index)
    for position, name in enumerate(order):  # each after what it depends on
        depends = modinfo(index[name].read_bytes()).get("depends", "")
        assert all(order.index(d.replace("-", "_")) < position for d in filter(None,
                   depends.split(",")))  # fmt: skip
    assert {"virtio_mmio", "virtio_console", "virtiofs", "fuse", "virtio_net"} <= set(order)
    with pytest.raises(ModuleError, match="no module no_such_module"):
        load_order(["no_such_module"], index)

    names = [line.split()[-1] for line in listing(boot.initrd.read_bytes())]
    assert {"init", "agent", "bin/busybox", "dev/console", "lib/modules/order"} <= set(names)
    assert {f"lib/modules/{name}.ko" for name in order} <= set(names)
    unpacked = subprocess.run(["busybox", "cpio", "-i", "--to-stdout", "lib/modules/order"],
                              input=boot.initrd.read_bytes(), capture_output=True, check=True)
    assert unpacked.stdout.decode().split() == order
    # Booted uncompressed at its PVH entry (the decompressor is not emulated at each
    # boot), its modules unsigned (no RSA check each), those only a job with network
    # needs listed apart (every VM has a disk, the job's own, over its image).
    assert boot.kernel.name == f"vmlinux-{boot.version}" and has_pvh_entry(
        boot.kernel.read_bytes())
    fuse = subprocess.run(["busybox", "cpio", "-i", "--to-stdout", "lib/modules/fuse.ko"],
                          input=boot.initrd.read_bytes(), capture_output=True, check=True)
    signed = index["fuse"].read_bytes()
    assert signed.endswith(SIGNED) and not fuse.stdout.endswith(SIGNED)
    assert fuse.stdout == unsigned(signed) and signed.startswith(fuse.stdout)
    assert modinfo(fuse.stdout)["name"] == "fuse"
    for need, names in {"net": ["failover", "net_failover", "virtio_net"]}.items():
        listed = subprocess.run(["busybox", "cpio", "-i", "--to-stdout", f"lib/modules/{need}"],
                                input=boot.initrd.read_bytes(), capture_output=True, check=True)
        assert listed.stdout.decode().split() == names


@pytest.mark.anyio
async def test_the_accelerator_is_known_in_well_under_a_second() -> None:
    started = time.monotonic()
    found = await accel.probe(fresh=True)
    assert time.monotonic() - started < 1.0
    if accel.PVM_MODULE.exists():
        assert found.name == "tcg" and "KVM-PVM" in found.reason
    # Without the module shortcut, the test boot itself finds out, as quickly.
    started = time.monotonic()
    forced = await accel.probe(fresh=True, pvm_module=Path("/nonexistent"))
    assert time.monotonic() - started < 1.5
    if accel.PVM_MODULE.exists():
        assert forced.name == "tcg"
    assert (await accel.probe()) == forced  # remembered
    # The probe's boot sector does run where the accelerator works.
    assert await accel.boots("qemu-system-x86_64", "tcg", 20.0)


@pytest.mark.anyio
async def test_an_image_the_guest_cannot_use_is_refused_before_booting(
        tmp_path: Path, vm_dir: Path) -> None:
    (tmp_path / "bin").mkdir()
    with pytest.raises(SandboxError, match=r"lacks /bin/sh, /etc/passwd, /home/build, /tmp"):
        await VmSandbox(SandboxSpec(rootfs=tmp_path), vm_dir=vm_dir).boot()
    closure = SandboxSpec(NixClosure(tmp_path, ("/nix/store/x/y",)))
    (tmp_path / "bin/sh").touch()
    for name in ("etc", "home/build", "tmp", "dev"):
        (tmp_path / name).mkdir(parents=True)
    (tmp_path / "etc/passwd").touch()
    with pytest.raises(SandboxError, match="'/nix/store/x/y' is not a store path"):
        await VmSandbox(closure, vm_dir=vm_dir).boot()
    with pytest.raises(SandboxError, match="There is no disk image"):
        await VmSandbox(SandboxSpec(DiskImage(tmp_path / "none.img")), vm_dir=vm_dir).boot()
