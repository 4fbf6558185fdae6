"""Name rules that several parts must agree on.

A cache name appears in URLs (``/cache/<name>/...``), in token scopes
(``cache:<name>:push``), in a manifest's ``cache:`` key and in nginx's locations, so it
is restricted to an alphabet safe in all four, and every one of them checks it with
this one rule. ``CACHE_NAME_PATTERN`` is the rule as regular expression text (nginx's
configuration embeds it), ``CACHE_NAME`` the compiled rule.
"""

from __future__ import annotations

import re

from nixfarm.errors import InvalidInput

CACHE_NAME_PATTERN = "[a-z0-9][a-z0-9._-]{0,62}"
CACHE_NAME = re.compile(CACHE_NAME_PATTERN)


def check_cache_name(name: str) -> str:
    """Return ``name`` if it is a valid cache name, else raise ``InvalidInput``."""
    if not CACHE_NAME.fullmatch(name):
        raise InvalidInput(
            f"Cache name {name!r} must be 1-63 characters of a-z, 0-9, '.', '_' or '-', "
            "starting with a letter or digit.",
            field="name",
        )
    return name
