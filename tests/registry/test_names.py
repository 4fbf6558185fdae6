"""Image names: validation, meta-packages, sorting."""

from __future__ import annotations

import pytest

from nixfarm.errors import InvalidInput
from nixfarm.registry import names


def test_names_are_sorted_and_deduplicated() -> None:
    a = names.parse("hello/busybox/hello")
    b = names.parse("busybox/hello")
    assert a.packages == b.packages == ("busybox", "hello")
    assert a.system == names.host_system()


def test_shell_and_arm64_are_meta_packages() -> None:
    image = names.parse("shell/hello/arm64")
    assert image.packages == ("bashInteractive", "coreutils", "hello", "moreutils", "nano")
    assert image.system == "aarch64-linux"
    with pytest.raises(InvalidInput, match="only meta-packages"):
        names.parse("arm64")


def test_attribute_paths_and_separators_are_allowed() -> None:
    assert names.parse("haskellpackages.pandoc/python3_pkgs/gtk-3").packages == (
        "gtk-3", "haskellpackages.pandoc", "python3_pkgs")


@pytest.mark.parametrize("name", [
    "../x", "a;b", "Hello", "a" * 300, "x" * 129, '${builtins.abort "x"}', "(import /etc)",
    "a b", "hello/", "/hello", "hello//busybox", ".hidden", "a..b", "-x", "x-", "a\"b", "",
])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        names.parse(name)
    assert caught.value.field == "name"


@pytest.mark.parametrize("tag", ["", ".x", "-x", "a" * 129, "a/b", "a:b"])
def test_bad_tags_are_refused(tag: str) -> None:
    with pytest.raises(InvalidInput):
        names.check_tag(tag)
    assert names.check_tag("latest") == "latest"
