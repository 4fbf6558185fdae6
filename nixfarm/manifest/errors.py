"""What is wrong with a manifest, and where.

A manifest is refused with every problem found in one pass, each pinned to the key
path, line and column it concerns, so that a user fixes them all in one go instead of
playing whack-a-mole with the submit button.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from nixfarm.errors import InvalidInput

PathElement = str | int
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_.+/-]+$")


def format_path(path: Sequence[PathElement]) -> str:
    """Render a key path as users write it: ``tasks[1]``, ``triggers[0].url``."""
    out = ""
    for element in path:
        if isinstance(element, int):
            out += f"[{element}]"
        elif _PLAIN_KEY.match(element):
            out += f".{element}" if out else element
        else:
            out += f"[{json.dumps(element)}]"
    return out


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a manifest; ``line`` and ``column`` count from 1.

    Both are 0 when the manifest did not come from text (a model built in code).
    """

    path: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        parts = [self.path] if self.path else []
        if self.line:
            parts.append(f"line {self.line}, column {self.column}")
        return ": ".join([*parts, self.message])


@dataclass
class ManifestError(InvalidInput):
    """A manifest that cannot be run, with every problem found in it.

    ``field`` names the key path of the first problem, as for any ``InvalidInput``.
    """

    problems: list[Problem] = field(default_factory=list)
    #: What was found but does not stop the manifest (unknown keys), for the record.
    warnings: list[Problem] = field(default_factory=list)

    @classmethod
    def of(cls, problems: Sequence[Problem], *, name: str = "",
           warnings: Sequence[Problem] = ()) -> ManifestError:
        """Build the error and its message; ``name`` (a file name) prefixes the message."""
        ordered = sorted(problems, key=lambda p: (p.line, p.column, p.path, p.message))
        subject = f"Invalid manifest {name}" if name else "Invalid manifest"
        if len(ordered) == 1:
            message = f"{subject}: {ordered[0]}"
        else:
            lines = "\n".join(f"  {p}" for p in ordered)
            message = f"{subject} ({len(ordered)} problems):\n{lines}"
        return cls(message, field=ordered[0].path if ordered else "", problems=list(ordered),
                   warnings=list(warnings))
