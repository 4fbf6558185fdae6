"""Loading a manifest: text (or data) to a checked ``Manifest``, problems located.

    manifest = load_manifest(text)          # ManifestError: every problem, located
    check_supported(manifest, images, arches)   # ManifestError: what we don't run

``load_manifest`` checks the format: it refuses a manifest builds.sr.ht would refuse,
and also what builds.sr.ht would accept and then fail on later (environment values it
cannot export, two sources cloned into one directory). Unknown top-level keys are
ignored, as builds.sr.ht ignores them, but each one is a *warning* (``Manifest.warnings``,
"did you mean 'environment'?" for a near miss) that submit and ``manifest check`` show;
``submitter`` (read by git.sr.ht when it submits, not by the build) is ignored quietly.
``check_supported`` checks the manifest against this server: a job asking for
``oauth``, an image or arch we don't have, is refused at submit time, never run without
what it asked for. The server's ``JobService.check`` calls both, for submit and for
``POST /api/v1/manifests/check`` alike, so a check says what a submit would.

How a problem gets its line and column: ``parsing`` turns the text into data
and a table of spots (key path -> line and column of the key and of its value);
pydantic validates the data (``models``) and reports error locations as key
paths; each path is looked up in the table, falling back to its nearest written
ancestor for a key that is missing. Task entries are written ``- name: script`` but
validated as ``Task(name, script)``, so their paths are mapped back first (aliases).
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from nixfarm.images import DEFAULT_ARCH, how_to_build
from nixfarm.manifest.errors import ManifestError, Problem, format_path
from nixfarm.manifest.models import Manifest, Trigger
from nixfarm.manifest.parsing import Path, Spot, load_located
from nixfarm.manifest.values import AT, describe

#: Keys builds.sr.ht manifests carry for other services: ignored without a warning.
QUIET_KEYS = frozenset({"submitter"})

_REQUIRED = {
    "image": "an image such as alpine/edge or nix",
    "action": "email or webhook",
    "condition": "success, failure or always",
}


def load_manifest(source: str | bytes, *, name: str = "") -> Manifest:
    """Parse and validate a manifest's text; ``name`` (a file name) goes in messages.

    Raises ``ManifestError`` with every problem found, each with its key path, line
    and column. The manifest remembers where its keys were written (``spot``).
    """
    document = load_located(source, name=name)
    manifest = _validate(document.data, document.spots, document.problems, name)
    manifest.locate(document.spots)
    return manifest


def manifest_from_data(data: Mapping[str, Any], *, name: str = "") -> Manifest:
    """Validate a manifest given as data (JSON); problems carry no line or column."""
    return _validate(dict(data), {}, [], name)


def check_supported(
    manifest: Manifest,
    available_images: Collection[str],
    available_arches: Collection[str],
    *,
    shell: bool = False,
    caches: Collection[str] | None = None,
    name: str = "",
) -> None:
    """Refuse, with every reason, a manifest this server would not run as written.

    ``shell`` says whether the server keeps a failed job's sandbox for a shell;
    ``caches``, when given, are the cache names the job's owner may push to.
    """
    problems: list[Problem] = []

    def refuse(key: str, message: str) -> None:
        spot = manifest.spot(key)
        line, column = (spot.value.line, spot.value.column) if spot else (0, 0)
        problems.append(Problem(key, line, column, message))

    if manifest.oauth:
        refuse(
            "oauth", "oauth is not supported: nixfarm gives jobs no OAuth tokens; remove the key"
        )
    if manifest.image not in available_images:
        # A catalogue image no runner has installed: say how a runner gets it.
        hint = how_to_build(manifest.image, manifest.arch or DEFAULT_ARCH)
        refuse(
            "image",
            f"image {manifest.image!r} is not available on this server"
            + (f" ({hint})" if hint else "")
            + f"; available images: {_listing(available_images)}",
        )
    if manifest.arch is not None and manifest.arch not in available_arches:
        refuse(
            "arch",
            f"arch {manifest.arch!r} is not available on this server; "
            f"available arches: {_listing(available_arches)}",
        )
    if manifest.shell and not shell:
        refuse(
            "shell",
            "shell: true (keeping a failed job open for a shell) is not supported by this server",
        )
    if manifest.cache is not None and caches is not None and manifest.cache not in caches:
        refuse("cache", f"there is no cache named {manifest.cache!r} that this job may push to")
    if problems:
        raise ManifestError.of(problems, name=name, warnings=manifest.warnings)


def _listing(names: Collection[str]) -> str:
    return ", ".join(sorted(names)) or "none"


def _unknown_keys(data: dict[str, Any], spots: dict[Path, Spot]) -> list[Problem]:
    """Drop the top-level keys the manifest does not know from ``data``; a warning each."""
    known = list(Manifest.model_fields)
    warnings = []
    for key in [k for k in data if k not in Manifest.model_fields]:
        del data[key]
        if key in QUIET_KEYS:
            continue
        spot = spots.get((key,))
        line, column = (spot.key.line, spot.key.column) if spot else (0, 0)
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        warnings.append(Problem(format_path((key,)), line, column,
                                f"unknown key {key!r} is ignored{hint}"))
    return warnings


def _validate(
    data: dict[str, Any], spots: dict[Path, Spot], found: list[Problem], name: str
) -> Manifest:
    problems = list(found)
    warnings = _unknown_keys(data, spots)
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as e:
        # A value the YAML stage already refused (a duplicate key, an odd tag) would
        # only be refused again, less clearly: keep the first word on it.
        seen = {p.path for p in problems}
        for problem in _problems(e, spots, _task_aliases(data)):
            if not any(
                problem.path == s
                or problem.path.startswith(s + ".")
                or problem.path.startswith(s + "[")
                for s in seen
            ):
                problems.append(problem)
        raise ManifestError.of(problems, name=name, warnings=warnings) from None
    if problems:
        raise ManifestError.of(problems, name=name, warnings=warnings)
    manifest.warn(warnings)
    return manifest


def _task_aliases(data: dict[str, Any]) -> dict[Path, Path]:
    aliases: dict[Path, Path] = {}
    tasks = data.get("tasks")
    if isinstance(tasks, list):
        for index, entry in enumerate(tasks):
            if isinstance(entry, dict) and len(entry) == 1:
                (task_name,) = entry
                aliases[("tasks", index, "name")] = ("tasks", index)
                aliases[("tasks", index, "script")] = ("tasks", index, task_name)
    return aliases


def _problems(
    error: ValidationError, spots: dict[Path, Spot], aliases: dict[Path, Path]
) -> list[Problem]:
    problems = []
    for details in error.errors(include_url=False):
        loc: Path = tuple(details["loc"])
        at_key = details["type"] == "extra_forbidden"
        if "[key]" in loc:  # a mapping key was refused: point at the key, not its value
            loc = loc[: loc.index("[key]")]
            at_key = True
        loc = (*loc, *(details.get("ctx") or {}).get(AT, ()))
        for length in range(len(loc), 0, -1):
            if loc[:length] in aliases:
                loc = (*aliases[loc[:length]], *loc[length:])
                break
        line = column = 0
        for length in range(len(loc), -1, -1):
            spot = spots.get(loc[:length])
            if spot is not None:
                exact = length == len(loc)
                at = spot.key if exact and at_key else spot.value
                line, column = at.line, at.column
                break
        problems.append(Problem(format_path(loc), line, column, _message(details, loc)))
    return problems


def _message(details: ErrorDetails, loc: Path) -> str:
    kind = details["type"]
    ctx = details.get("ctx") or {}
    got = describe(details.get("input"))
    key = loc[-1] if loc else ""
    if kind == "manifest":
        return details["msg"]
    if kind == "missing":
        return f"missing key {key!r}; expected {_REQUIRED.get(str(key), 'a value')}"
    if kind == "extra_forbidden":
        model: type[Manifest | Trigger] = Trigger if loc[0] == "triggers" else Manifest
        return f"unknown key {key!r}; expected one of {', '.join(model.model_fields)}"
    if kind == "string_type":
        return f"expected a string, got {got}"
    if kind == "bool_type":
        return f"expected true or false, got {got}"
    if kind == "list_type":
        return f"expected a list, got {got}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"expected a mapping, got {got}"
    if kind == "literal_error":
        return f"expected {ctx.get('expected')}, got {got}"
    if kind == "too_long":
        return (
            f"at most {ctx.get('max_length')} entries are allowed, got {ctx.get('actual_length')}"
        )
    if kind == "string_too_long":
        return f"at most {ctx.get('max_length')} characters are allowed"
    return str(details["msg"])
