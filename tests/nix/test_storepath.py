from __future__ import annotations

import pytest

from nixfarm.errors import InvalidInput
from nixfarm.nix.storepath import STORE_DIR, StorePath, is_hash_part

HASH = "2xzsyqgwc9qq7f5hjnxgyyz8771dw581"


def test_parses_full_paths_and_basenames(probe_top: str) -> None:
    path = StorePath.parse(probe_top)
    assert path.path == probe_top
    assert path.basename == probe_top.removeprefix(STORE_DIR + "/")
    assert path.name == "probe-top"
    assert StorePath.parse(path.basename) == path
    assert str(path) == probe_top


def test_names_may_hold_every_allowed_character() -> None:
    name = "Az09+-._?=x"
    assert StorePath.parse(f"{HASH}-{name}").name == name
    assert StorePath.parse(f"{HASH}-{'a' * 211}").name == "a" * 211
    assert StorePath.parse(f"{HASH}-foo-1.0.drv").name == "foo-1.0.drv"


def test_sorts_like_nix() -> None:
    paths = [StorePath.parse(f"{h * 32}-x") for h in "b0a"]
    assert [p.hash_part[0] for p in sorted(paths)] == ["0", "a", "b"]


@pytest.mark.parametrize(
    "text",
    [
        "",
        HASH,
        f"{HASH}-",
        f"{HASH}-.hidden",
        f"{HASH}-..",
        f"{HASH}-a/b",
        f"{HASH}-a b",
        f"{HASH}-caf\u00e9",
        f"{HASH}-{'a' * 212}",
        f"{HASH}_name",
        f"{HASH[:-1]}e-name",  # 'e' is not nix32
        f"{HASH[:-1]}-name",
        f"/nix/store/{HASH}-name/bin/sh",
        f"/other/store/{HASH}-name",
        f"/nix/store/../{HASH}-name",
        f"/nix/store//{HASH}-name",
    ],
)
def test_rejects_everything_else(text: str) -> None:
    with pytest.raises(InvalidInput):
        StorePath.parse(text)


def test_constructor_validates_too() -> None:
    with pytest.raises(InvalidInput):
        StorePath("short", "name")
    with pytest.raises(InvalidInput):
        StorePath(HASH, "../etc")


def test_is_hash_part() -> None:
    assert is_hash_part(HASH)
    assert not is_hash_part(HASH.upper())
    assert not is_hash_part(HASH[:-1])
    assert not is_hash_part(HASH + "0")
    assert not is_hash_part("e" * 32)
