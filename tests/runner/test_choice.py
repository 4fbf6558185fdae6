"""Which sandbox a runner with several kinds gives an image (``--sandbox vm,bwrap``)."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from nixfarm.runner.sandbox import BwrapSandbox, DiskImage, NixClosure, RootDir, SandboxSpec
from nixfarm.runner.sandbox.base import NixClient, SandboxError
from nixfarm.runner.sandbox.choice import SandboxChoice, combine, parse_kinds
from nixfarm.runner.sandbox.vm import VmSandbox


def test_kinds_are_parsed_in_order_of_preference() -> None:
    assert parse_kinds("vm,bwrap") == ("vm", "bwrap")
    assert parse_kinds(" bwrap , vm,bwrap") == ("bwrap", "vm")
    with pytest.raises(SandboxError, match="There is no sandbox 'docker'"):
        parse_kinds("vm,docker")
    with pytest.raises(SandboxError, match="Name a sandbox"):
        parse_kinds(" ")


@pytest.mark.parametrize("order", [("vm", "bwrap"), ("bwrap", "vm")])
def test_disk_images_go_to_a_vm_and_others_to_the_preferred_kind(
        order: tuple[str, str], tmp_path: Path) -> None:
    made = {"bwrap": SandboxChoice("bwrap", BwrapSandbox),
            "vm": SandboxChoice("vm", functools.partial(VmSandbox, vm_dir=tmp_path), "tcg",
                                "vm (tcg)")}  # fmt: skip
    both = combine([made[kind] for kind in order])
    assert both.kinds == order and both.kind == order[0] and both.accelerator == "tcg"
    kinds = {BwrapSandbox: "bwrap", VmSandbox: "vm"}
    disk = both.new_sandbox(SandboxSpec(DiskImage(tmp_path / "root.img.qcow2")))
    assert kinds[type(disk)] == "vm"
    for image in (RootDir(tmp_path), NixClosure(tmp_path, ())):
        assert kinds[type(both.new_sandbox(SandboxSpec(image)))] == order[0]
    # A VM gives Nix to its guest too (vm.nixguest): Nix jobs go to the preferred kind.
    with_nix = SandboxSpec(NixClosure(tmp_path, ()), nix_client=NixClient(tmp_path / "sock"))
    assert kinds[type(both.new_sandbox(with_nix))] == order[0]
    assert combine([made["vm"]]) is made["vm"]
