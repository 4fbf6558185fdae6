"""Token scopes: what they are called and what each one allows.

A token carries a list of scope strings; a request needs one. The vocabulary:

    admin                   everything
    cache:<name>:pull       read a (private) cache; <name> may be * for every cache
    cache:<name>:push       upload into a cache, and read it
    jobs:submit             submit build jobs
    runner                  act as a runner (claim jobs, send logs and results)
    registry:pull           pull images when the registry requires authentication

Checking is pure string work, no database: ``allows(token.scopes, needed)``.
"""

from __future__ import annotations

from collections.abc import Iterable

from nixfarm.errors import InvalidInput
from nixfarm.naming import CACHE_NAME

ADMIN = "admin"
JOBS_SUBMIT = "jobs:submit"
RUNNER = "runner"
REGISTRY_PULL = "registry:pull"
_SIMPLE = frozenset({ADMIN, JOBS_SUBMIT, RUNNER, REGISTRY_PULL})
_CACHE_ACTIONS = ("pull", "push")


def cache_scope(name: str, action: str) -> str:
    """The scope needed to ``action`` (pull or push) the cache called ``name``."""
    return parse_scope(f"cache:{name}:{action}")


def parse_scope(text: str) -> str:
    """Return ``text`` if it is a known scope, else raise ``InvalidInput``."""
    if text in _SIMPLE:
        return text
    parts = text.split(":")
    if (
        len(parts) == 3
        and parts[0] == "cache"
        and (parts[1] == "*" or CACHE_NAME.fullmatch(parts[1]))
        and parts[2] in _CACHE_ACTIONS
    ):
        return text
    raise InvalidInput(
        f"Unknown scope {text!r}: expected admin, cache:<name>:pull, cache:<name>:push, "
        "jobs:submit, runner or registry:pull.",
        field="scopes",
    )


def _grants(scope: str, needed: str) -> bool:
    if scope in (needed, ADMIN):
        return True
    have = scope.split(":")
    want = needed.split(":")
    if len(have) != 3 or len(want) != 3 or have[0] != "cache" or want[0] != "cache":
        return False
    # A wildcard grants any one cache, but a literal name never grants the wildcard.
    same_cache = have[1] in ("*", want[1])
    # Whoever may upload into a cache may also read it.
    action_covered = have[2] == want[2] or (have[2] == "push" and want[2] == "pull")
    return same_cache and action_covered


def allows(granted: Iterable[str], needed: str) -> bool:
    """Whether a token with the ``granted`` scopes may do what ``needed`` names."""
    return any(_grants(scope, needed) for scope in granted)
