"""The rules for single values in a manifest: names, URLs, addresses, paths.

Each rule is a function that returns the value (sometimes normalised: a secret UUID in
canonical form, a null environment value as "") or raises ``refuse(...)``, a pydantic
error whose message says what was expected. ``refuse`` can point below the value it
checks (``at``): ``loading._problems`` follows that to a line and column.
"""

from __future__ import annotations

import math
import posixpath
import re
import uuid
from email.utils import getaddresses
from typing import Any
from urllib.parse import urlsplit

from pydantic_core import PydanticCustomError

from nixfarm.manifest.errors import PathElement
from nixfarm.naming import CACHE_NAME, CACHE_NAME_PATTERN

TASK_NAME = re.compile(r"^[a-z0-9_-]+$")
IMAGE = re.compile(r"^(?:nix|[a-z0-9][a-z0-9._+-]*(?:/[a-z0-9][a-z0-9._+-]*)?)$")
ARCH = re.compile(r"^[a-z0-9_]{1,32}$")
PACKAGE = re.compile(r"^[^\s\-][^\s]*$")
REPOSITORY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# The worker sets these itself, after the manifest's environment; a manifest that sets
# them would be silently overridden, so it is refused instead.
RESERVED_ENV = frozenset({"CI_NAME", "JOB_ID", "JOB_URL"})

AT = "nixfarm_at"


def refuse(message: str, *at: PathElement) -> PydanticCustomError:
    """An error for pydantic to collect; ``at`` points below the validated value."""
    return PydanticCustomError("manifest", message, {AT: list(at)})


def describe(value: Any) -> str:
    """A value as YAML users think of it, for "expected X, got Y"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def image(value: str) -> str:
    if not IMAGE.match(value) or len(value) > 128:
        raise refuse(
            f"image {value!r} is not an image name; expected distro/release "
            "(alpine/edge), a rolling distro (archlinux) or nix"
        )
    return value


def arch(value: str) -> str:
    if not ARCH.match(value):
        raise refuse(f"arch {value!r} is not an architecture name such as x86_64")
    return value


def package(value: str) -> str:
    if not PACKAGE.match(value):
        raise refuse(f"package {value!r} must be one name without spaces, not starting with '-'")
    return value


def repository_name(value: str) -> str:
    if not REPOSITORY_NAME.match(value):
        raise refuse(f"repository name {value!r} must match ^[A-Za-z0-9][A-Za-z0-9._-]*$")
    return value


def nonempty(value: str) -> str:
    if not value.strip():
        raise refuse("expected a non-empty string")
    return value


def env_name(value: str) -> str:
    if not ENV_NAME.match(value):
        raise refuse(f"environment variable name {value!r} must match ^[A-Za-z_][A-Za-z0-9_]*$")
    if value in RESERVED_ENV:
        raise refuse(f"{value} is set by the build server and cannot be overridden")
    return value


EnvValue = str | list[str]


def _env_text(value: Any, *at: PathElement) -> str:
    # builds.sr.ht's worker gets the manifest as JSON, so a number reaches it as a
    # float64 that it writes with Go's shortest form; written here the way people
    # read numbers: 10 stays 10 (not 10.0), 1.5 stays 1.5, booleans are true/false.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise refuse(f"expected a finite number, got {value}", *at)
        return str(int(value)) if value.is_integer() and abs(value) < 1e21 else repr(value)
    if isinstance(value, str):
        return value
    raise refuse(f"expected a string or a number, got {describe(value)}", *at)


def env_value(value: Any) -> EnvValue:
    # builds.sr.ht exports strings, numbers, booleans and lists of them (as a bash
    # array); null becomes the empty string. Numbers and booleans become their text
    # here, so that the job sees what the manifest says whoever reads it. Anything
    # else builds.sr.ht silently drops: refused.
    if value is None:
        return ""
    if isinstance(value, list):
        return [_env_text(item, index) for index, item in enumerate(value)]
    if isinstance(value, dict):
        raise refuse(
            f"expected a string, number, boolean or list of them, got {describe(value)}")
    return _env_text(value)


def secret(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        pass
    if not 3 <= len(value) <= 512 or not value.isprintable():
        raise refuse(
            f"secret {value!r} is neither a UUID nor a secret name (3 to 512 printable characters)"
        )
    return value


def artifact(value: str) -> str:
    if not value or "\0" in value or "\n" in value:
        raise refuse("expected a file path")
    if value.endswith("/") or posixpath.basename(value) in ("", ".", ".."):
        raise refuse(f"artifact {value!r} must name a file, not a directory")
    return value


def cache_name(value: str) -> str:
    if not CACHE_NAME.fullmatch(value):
        raise refuse(f"cache name {value!r} must match ^{CACHE_NAME_PATTERN}$")
    return value


def no_newline(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise refuse("must be one line")
    return value


def addresses(value: str) -> str:
    no_newline(value)
    found = [address for _, address in getaddresses([value])]
    if not found or not all(re.match(r"^[^@\s]+@[^@\s]+$", a) for a in found):
        raise refuse(f"{value!r} is not a list of email addresses (Name <user@example.org>, ...)")
    return value


def webhook_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise refuse(f"webhook url {value!r} must be an http:// or https:// URL")
    return value
