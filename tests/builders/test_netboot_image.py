"""The netboot image (nixfarm/netboot/image.py): what is in it, and that it is made once
per set of inputs and again when they change. Real files: the kernel is fetched from
Debian's registry the first time (apt-get download), the rest comes from this host."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

import nixfarm.demo
from nixfarm.builders.local import LocalProvider
from nixfarm.builders.vultr import VultrProvider
from nixfarm.netboot.image import netboot_image
from nixfarm.server.netboot_routes import ipxe_script

pytestmark = pytest.mark.anyio


def _entries(archive: bytes) -> dict[str, tuple[int, bytes]]:
    """name -> (mode, data) of a newc cpio archive."""
    found: dict[str, tuple[int, bytes]] = {}
    at = 0
    while True:
        header = archive[at : at + 110]
        assert header[:6] == b"070701"
        fields = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        mode, size, name_size = fields[1], fields[6], fields[11]
        name_end = at + 110 + name_size
        name = archive[at + 110 : name_end - 1].decode()
        data_at = name_end + (-name_end % 4)
        if name == "TRAILER!!!":
            return found
        found[name] = (mode, archive[data_at : data_at + size])
        at = data_at + size + (-(data_at + size) % 4)


async def test_the_image_holds_a_builder_and_is_made_once_per_inputs(tmp_path: Path) -> None:
    root = tmp_path / "netboot"
    image = await netboot_image(root, {"substituters": ""}, nixfarm.demo.path())
    assert image.kernel.read_bytes()[0x202:0x206] == b"HdrS"  # a bzImage
    entries = _entries(image.initrd.read_bytes())
    for program in ("usr/bin/nix", "usr/bin/bwrap", "usr/bin/python3.11", "usr/bin/busybox",
                    "usr/sbin/dmsetup", "usr/bin/git", "usr/lib/git-core/git-remote-http"):
        mode, data = entries[program]
        assert stat.S_ISREG(mode) and mode & 0o111 and data[:4] == b"\x7fELF", program
    assert stat.S_ISLNK(entries["usr/bin/nix-daemon"][0])
    assert entries["init"][1].startswith(b"#!/bin/busybox sh")
    assert b"dm_crypt" in entries["usr/lib/nixfarm-modules/order"][1]
    assert "usr/lib/nixfarm/site/nixfarm/netboot/bootstrap.py" in entries
    assert "usr/lib/nixfarm/site/nixfarm/runner/agent.py" in entries
    assert "usr/lib/nixfarm/site/httpx/__init__.py" in entries
    assert "usr/lib/nixfarm/nix-source/default.nix" in entries  # the package source
    assert b"substituters = \n" in entries["etc/nix/nix.conf"][1]
    assert any(name.endswith("/libc.so.6") for name in entries)

    # The same inputs: the same image, not made again.
    made = image.initrd.stat().st_mtime_ns
    again = await netboot_image(root, {"substituters": ""}, nixfarm.demo.path())
    assert again == image and again.initrd.stat().st_mtime_ns == made
    # Other inputs: another image, and the stale one is gone.
    other = await netboot_image(root, {"substituters": "", "cores": "1"}, nixfarm.demo.path())
    assert other.key != image.key and other.initrd.exists()
    assert not image.initrd.exists()


def test_the_ipxe_script_names_where_the_user_data_is_never_what() -> None:
    local = ipxe_script(LocalProvider.boot_args)
    assert local.startswith("#!ipxe\n")
    assert "kernel vmlinuz " in local and "initrd initrd" in local
    assert "nixfarm.userdata=fwcfg" in local and "nixfarm.loopback=10.0.2.2" in local
    vultr = ipxe_script(VultrProvider.boot_args)
    assert "nixfarm.userdata=http://169.254.169.254/latest/user-data" in vultr
    assert "loopback" not in vultr and "nfe_" not in vultr
