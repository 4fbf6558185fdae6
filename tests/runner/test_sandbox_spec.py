"""``SandboxSpec``: an image is a root directory, a Nix closure or a disk image."""

from __future__ import annotations

from pathlib import Path

import pytest

from nixfarm.runner.sandbox import DiskImage, NixClosure, RootDir, SandboxError, SandboxSpec


def test_a_root_directory_shorthand_makes_the_image_kind() -> None:
    plain = SandboxSpec(rootfs=Path("/img"))
    assert plain.image == RootDir(Path("/img"))
    assert (plain.rootfs, plain.store_paths) == (Path("/img"), ())
    nix = SandboxSpec(rootfs=Path("/forest"), store_paths=["/nix/store/a-x", "/nix/store/b-y"])
    assert nix.image == NixClosure(Path("/forest"), ("/nix/store/a-x", "/nix/store/b-y"))
    assert (nix.rootfs, nix.store_paths) == (Path("/forest"), ("/nix/store/a-x", "/nix/store/b-y"))
    assert SandboxSpec(NixClosure(Path("/f"), ("/nix/store/a-x",))).rootfs == Path("/f")


def test_a_disk_image_has_no_root_directory() -> None:
    spec = SandboxSpec(DiskImage(Path("/images/root.qcow2")), network=True)
    assert spec.store_paths == () and spec.network
    with pytest.raises(SandboxError, match=r"/images/root.qcow2 is a disk image: only a virtual"):
        _ = spec.rootfs


def test_an_image_is_given_once() -> None:
    with pytest.raises(SandboxError, match="needs an image"):
        SandboxSpec()
    with pytest.raises(SandboxError, match="not both"):
        SandboxSpec(RootDir(Path("/a")), rootfs=Path("/b"))
