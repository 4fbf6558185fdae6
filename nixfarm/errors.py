"""The error tree of nixfarm.

Every failure a caller can act on is one of these classes. They carry structured
fields (what was wrong, with which object), never pre-formatted HTTP responses:
``nixfarm.server.errors`` maps them to status codes, the Nix cache answers and the
OCI ``{"errors": [...]}`` envelope, in one place. ``exit_code`` maps them to the exit
codes of the CLI and of the farm's own processes.

    NixfarmError
    ├── ConfigError          bad configuration (a key, a value)
    │   └── PrerequisiteMissing  the host lacks what a part needs (Nix, nginx, ...)
    ├── InvalidInput         a request or file the caller sent is malformed
    │   └── IntegrityError   content does not match the hash/size it claims
    ├── NotFound             a named object does not exist
    ├── Unauthorized         no credentials, or credentials we don't know
    ├── Forbidden            known credentials without the needed scope
    ├── Conflict             the object exists / the state forbids the change
    ├── NixError             a nix command failed (which derivation, why)
    │   └── NixTimeout       a nix command ran out of time
    ├── StorageError         the object store failed
    ├── Unavailable          a client got no answer from the server (or a proxy's 502-504)
    └── ProviderError        a builder provider (a cloud API) refused or failed a call
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class NixfarmError(Exception):
    """Base of all nixfarm errors; ``message`` is one clear sentence."""

    message: str

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


@dataclass
class ConfigError(NixfarmError):
    key: str = ""


@dataclass
class PrerequisiteMissing(ConfigError):
    """The host lacks something a part of the farm needs; ``fix`` is the command that mends it."""

    check: str = ""
    fix: str = ""


@dataclass
class InvalidInput(NixfarmError):
    field: str = ""


@dataclass
class IntegrityError(InvalidInput):
    expected: str = ""
    actual: str = ""


@dataclass
class NotFound(NixfarmError):
    kind: str = ""
    name: str = ""


@dataclass
class Unauthorized(NixfarmError):
    realm: str = "nixfarm"


@dataclass
class Forbidden(NixfarmError):
    scope: str = ""


@dataclass
class Conflict(NixfarmError):
    pass


@dataclass
class NixError(NixfarmError):
    """A nix command failed; ``drv`` names the failing derivation when Nix said so."""

    drv: str = ""
    log_tail: list[str] = field(default_factory=list)


@dataclass
class NixTimeout(NixError):
    seconds: float = 0.0


@dataclass
class StorageError(NixfarmError):
    key: str = ""


@dataclass
class Unavailable(NixfarmError):
    """The server could not be reached, or did not answer in time: worth trying again."""

    url: str = ""


@dataclass
class ProviderError(NixfarmError):
    """A builder provider refused or failed a call: ``provider`` (vultr, local), the
    ``status`` it answered (0: no answer), and ``retryable`` (429, 5xx, no answer)."""

    provider: str = ""
    status: int = 0
    retryable: bool = False
    #: Seconds the provider asked to wait before another try (``Retry-After``).
    retry_after: float = 0.0


def exit_code(error: NixfarmError) -> int:
    """The exit status a command ends with for ``error`` (docs/design.md): 2 for bad
    usage or bad input (what the caller can fix by asking differently), 1 when the
    operation failed."""
    if isinstance(error, IntegrityError):
        return 1
    if isinstance(error, InvalidInput | NotFound | ConfigError):
        return 2
    return 1
