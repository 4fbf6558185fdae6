"""Value types of the wire models: checked when a message is decoded, not where used.

As attic's newtypes do, a store path, a NAR hash or a compression in a
wire model is a type that validates itself: a message carrying a bad one is refused
as a whole, with the field named (by the API's 400, or the client's decoding error),
before any service sees it. The checks are the Nix format code's (``nixfarm.nix``); the
values stay the strings that were sent.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Annotated

from pydantic import AfterValidator, Field, WithJsonSchema

from nixfarm.errors import InvalidInput
from nixfarm.nix.compression import EXTENSIONS
from nixfarm.nix.hashes import normalise_hash
from nixfarm.nix.storepath import StorePath


def _checked(check: Callable[[str], object]) -> AfterValidator:
    """A validator that runs ``check`` and reports its ``InvalidInput`` as pydantic's."""

    def validate(value: str) -> str:
        try:
            check(value)
        except InvalidInput as e:
            raise ValueError(e.message) from None
        return value

    return AfterValidator(validate)


def _base64(value: str) -> None:
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("the value is not valid base64") from None


#: ``/nix/store/<hash>-<name>`` (or the bare basename), as Nix allows it.
StorePathText = Annotated[str, Field(max_length=4096), _checked(StorePath.parse)]
#: A NAR's sha256 in any spelling Nix prints (``sha256:<nix32>``, hex, base64, SRI).
NarHash = Annotated[str, Field(max_length=200), _checked(normalise_hash)]
def _compression(value: str) -> None:
    if value not in EXTENSIONS:
        raise InvalidInput(f"{value!r} is not a compression nixfarm knows "
                           f"({', '.join(sorted(EXTENSIONS))})")


#: How a NAR is compressed in transit and in the cache (``nix.compression``).
Compression = Annotated[str, _checked(_compression),
                        WithJsonSchema({"type": "string", "enum": sorted(EXTENSIONS)})]
#: Bytes as base64 text (a secret's value).
Base64Text = Annotated[str, _checked(_base64)]

