"""Scope parsing and checking (pure functions, no database)."""

from __future__ import annotations

import pytest

from nixfarm.errors import InvalidInput
from nixfarm.scopes import allows, cache_scope, parse_scope


@pytest.mark.parametrize(
    "scope",
    [
        "admin",
        "jobs:submit",
        "runner",
        "registry:pull",
        "cache:main:pull",
        "cache:main:push",
        "cache:*:pull",
        "cache:*:push",
        "cache:my-cache.v2_x:push",
    ],
)
def test_known_scopes_parse(scope: str) -> None:
    assert parse_scope(scope) == scope


@pytest.mark.parametrize(
    "scope",
    [
        "",
        "Admin",
        "admin ",
        "cache",
        "cache:main",
        "cache:main:delete",
        "cache::pull",
        "cache:Main:pull",
        "cache:a/b:pull",
        "cache:main:pull:extra",
        "cache:**:pull",
        "jobs:*",
        "registry:push",
    ],
)
def test_unknown_scopes_are_invalid(scope: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_scope(scope)
    assert info.value.field == "scopes"


def test_cache_scope() -> None:
    assert cache_scope("main", "push") == "cache:main:push"
    with pytest.raises(InvalidInput):
        cache_scope("Bad Name", "pull")


@pytest.mark.parametrize(
    ("granted", "needed", "allowed"),
    [
        (["admin"], "cache:main:push", True),
        (["admin"], "runner", True),
        (["admin"], "cache:*:push", True),
        (["runner"], "runner", True),
        (["runner"], "jobs:submit", False),
        (["jobs:submit"], "runner", False),
        (["registry:pull"], "registry:pull", True),
        (["cache:main:pull"], "cache:main:pull", True),
        (["cache:main:pull"], "cache:main:push", False),
        (["cache:main:push"], "cache:main:pull", True),
        (["cache:main:push"], "cache:other:pull", False),
        (["cache:main:push"], "cache:other:push", False),
        (["cache:*:push"], "cache:other:push", True),
        (["cache:*:push"], "cache:other:pull", True),
        (["cache:*:pull"], "cache:other:pull", True),
        (["cache:*:pull"], "cache:other:push", False),
        # A grant for one cache is not a grant for all of them.
        (["cache:main:push"], "cache:*:push", False),
        (["cache:*:push"], "cache:*:pull", True),
        (["cache:main:pull", "cache:main:push"], "cache:main:push", True),
        (["jobs:submit", "cache:x:pull"], "cache:x:pull", True),
        ([], "cache:main:pull", False),
        (["cache:main:push"], "admin", False),
        (["cache:*:push"], "jobs:submit", False),
    ],
)
def test_allows(granted: list[str], needed: str, allowed: bool) -> None:
    assert allows(granted, needed) is allowed
    assert allows(iter(granted), needed) is allowed
