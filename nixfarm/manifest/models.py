"""The manifest's data model: pydantic models with the rules of each key.

One rule set, whether a manifest arrives as YAML text or as data: the rules for single
values are in ``values``, the ones that relate keys to each other (unique
task names, what each trigger takes, tasks or a shell) are here. Validators raise
``values.refuse(...)``: a message saying what was expected, and optionally a path below
the checked value (a webhook trigger's stray ``to``, the second of two equal task
names) that ``loading._problems`` follows to a line and column.

A manifest dumps (``model_dump()``) back into the builds.sr.ht shape: tasks as
one-key mappings, sources as their strings; dump and validate round-trip.
"""

from __future__ import annotations

import posixpath
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    PrivateAttr,
    field_serializer,
    field_validator,
    model_validator,
)

from nixfarm.manifest import values
from nixfarm.manifest.errors import PathElement, Problem
from nixfarm.manifest.parsing import Path, Spot
from nixfarm.manifest.sources import Scm, parse_source

MAX_TASKS = 100
MAX_TASK_NAME = 128
MAX_ITEMS = 1000  # packages, environment entries
MAX_SOURCES = 100
MAX_REPOSITORIES = 50
MAX_SECRETS = 100
MAX_TRIGGERS = 20
MAX_ARTIFACTS = 100

# --- parts -----------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Task(_Model):
    """One step of a job: a shell script run in the build user's home."""

    name: Annotated[str, Field(max_length=MAX_TASK_NAME)]
    script: str

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not values.TASK_NAME.match(value):
            raise values.refuse(f"task name {value!r} must match ^[a-z0-9_-]+$")
        return value


def _task_from_mapping(value: Any) -> Any:
    # Written as "- name: script"; becomes Task(name, script). Aliases in
    # load_manifest point errors about "name"/"script" back at that one-key mapping.
    if isinstance(value, Task):
        return value
    if not isinstance(value, dict) or len(value) != 1:
        got = (
            f"a mapping with {len(value)} keys"
            if isinstance(value, dict)
            else values.describe(value)
        )
        raise values.refuse(f"expected a task as one 'name: script' entry, got {got}")
    ((name, script),) = value.items()
    if not isinstance(script, str):
        raise values.refuse(
            f"the script of task {name!r} must be a string, got {values.describe(script)}", "script"
        )
    return {"name": name, "script": script}


class Source(_Model):
    """A repository cloned into the build user's home before the tasks run."""

    spec: str  # as written in the manifest: [directory::][scm+]url[#ref]
    scm: Scm
    url: str
    ref: str | None = None
    directory: str


def _source_from_string(value: Any) -> Any:
    if isinstance(value, Source):
        return value
    if not isinstance(value, str):
        raise values.refuse(f"expected a repository URL string, got {values.describe(value)}")
    try:
        parsed = parse_source(value)
    except ValueError as e:
        raise values.refuse(str(e)) from None
    return Source(
        spec=value, scm=parsed.scm, url=parsed.url, ref=parsed.ref, directory=parsed.directory
    )


Condition = Literal["success", "failure", "always"]
_EMAIL_KEYS = ("to", "cc", "in_reply_to")
_WEBHOOK_KEYS = ("url",)


class Trigger(_Model):
    """What to do when the job ends: an email (to, cc, in_reply_to) or a webhook (url)."""

    action: Literal["email", "webhook"]
    condition: Condition
    to: Annotated[str, AfterValidator(values.addresses)] | None = None
    cc: Annotated[str, AfterValidator(values.addresses)] | None = None
    in_reply_to: Annotated[str, AfterValidator(values.no_newline)] | None = None
    url: Annotated[str, AfterValidator(values.webhook_url)] | None = None

    @property
    def _kind(self) -> str:
        return "an email" if self.action == "email" else "a webhook"

    @model_validator(mode="after")
    def _keys_fit_action(self) -> Trigger:
        own, other = (
            (_EMAIL_KEYS, _WEBHOOK_KEYS) if self.action == "email" else (_WEBHOOK_KEYS, _EMAIL_KEYS)
        )
        for key in other:
            if getattr(self, key) is not None:
                raise values.refuse(
                    f"{self._kind} trigger takes no {key!r}; its keys are "
                    f"{', '.join(('action', 'condition', *own))}",
                    key,
                )
        # builds.sr.ht mails an email trigger's to and cc alike: either will do.
        required = ("to", "cc") if self.action == "email" else ("url",)
        if all(getattr(self, key) is None for key in required):
            needs = " or ".join(repr(key) for key in required)
            raise values.refuse(f"{self._kind} trigger needs {needs}", required[0])
        return self


# --- the manifest ----------------------------------------------------------------


def _unique(items: list[str], what: str, key: Any = lambda v: v) -> None:
    first: dict[str, int] = {}
    for index, value in enumerate(items):
        seen = first.setdefault(key(value), index)
        if seen != index:
            raise values.refuse(f"{what} {key(value)!r} is already listed at index {seen}", index)


_Items = Field(max_length=MAX_ITEMS)
EnvValue = values.EnvValue
_EnvInput = str | int | float | bool | list[str | int | float | bool] | None


class Manifest(_Model):
    """A validated build manifest; see the module docstring and ``load_manifest``."""

    image: Annotated[str, AfterValidator(values.image)]
    arch: Annotated[str, AfterValidator(values.arch)] | None = None
    packages: Annotated[list[Annotated[str, AfterValidator(values.package)]], _Items] = []
    repositories: Annotated[
        dict[
            Annotated[str, AfterValidator(values.repository_name)],
            Annotated[str, AfterValidator(values.nonempty)],
        ],
        Field(max_length=MAX_REPOSITORIES),
    ] = {}
    sources: Annotated[
        list[Annotated[Source, BeforeValidator(_source_from_string)]],
        Field(max_length=MAX_SOURCES),
    ] = []
    environment: Annotated[
        dict[
            Annotated[str, AfterValidator(values.env_name)],
            Annotated[
                values.EnvValue,
                PlainValidator(values.env_value, json_schema_input_type=_EnvInput),
            ],
        ],
        _Items,
    ] = {}
    secrets: Annotated[
        list[Annotated[str, AfterValidator(values.secret)]], Field(max_length=MAX_SECRETS)
    ] = []
    tasks: Annotated[
        list[Annotated[Task, BeforeValidator(_task_from_mapping)]],
        Field(max_length=MAX_TASKS),
    ] = []
    triggers: Annotated[list[Trigger], Field(max_length=MAX_TRIGGERS)] = []
    artifacts: Annotated[
        list[Annotated[str, AfterValidator(values.artifact)]], Field(max_length=MAX_ARTIFACTS)
    ] = []
    shell: bool = False
    oauth: str | None = None
    #: nixfarm's own key: the cache the job's Nix build outputs and logs are pushed to.
    cache: Annotated[str, AfterValidator(values.cache_name)] | None = None

    # Where each key path was written, when the manifest came from text.
    _spots: dict[Path, Spot] = PrivateAttr(default_factory=dict)
    # What loading found but let pass (unknown keys): see ``warnings``.
    _warnings: list[Problem] = PrivateAttr(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _null_means_unset(cls, data: Any) -> Any:
        # "packages:" with nothing after it is YAML null: the key is not set. A null
        # image stays, to be refused with the other image errors.
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None or k == "image"}
        return data

    @field_validator("oauth")
    @classmethod
    def _empty_oauth_is_none(cls, value: str | None) -> str | None:
        # builds.sr.ht grants OAuth only for a non-empty oauth: "oauth: ''" asks nothing.
        return value if value and value.strip() else None

    @field_validator("sources")
    @classmethod
    def _distinct_directories(cls, value: list[Source]) -> list[Source]:
        _unique([s.directory for s in value], "clone directory")
        return value

    @field_validator("secrets")
    @classmethod
    def _distinct_secrets(cls, value: list[str]) -> list[str]:
        _unique(value, "secret")
        return value

    @field_validator("tasks")
    @classmethod
    def _distinct_tasks(cls, value: list[Task]) -> list[Task]:
        _unique([t.name for t in value], "task")
        return value

    @field_validator("artifacts")
    @classmethod
    def _distinct_artifacts(cls, value: list[str]) -> list[str]:
        # Artifacts are stored under their file name: two with one name would collide.
        _unique(value, "artifact file name", posixpath.basename)
        return value

    @model_validator(mode="after")
    def _coherent(self) -> Manifest:
        if not self.tasks and not self.shell:
            raise values.refuse("a manifest needs at least one task (or shell: true)", "tasks")
        if self.image == "nix" and self.repositories:
            raise values.refuse(
                "the nix image takes its packages from the server's Nix package "
                "source; repositories only apply to distro images",
                "repositories",
            )
        return self

    @field_serializer("tasks")
    def _dump_tasks(self, tasks: list[Task]) -> list[dict[str, str]]:
        return [{t.name: t.script} for t in tasks]

    @field_serializer("sources")
    def _dump_sources(self, sources: list[Source]) -> list[str]:
        return [s.spec for s in sources]

    def __eq__(self, other: object) -> bool:
        # Equal manifests are equal wherever their keys were written.
        return isinstance(other, Manifest) and self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]  # lists inside: not hashable anyway

    def spot(self, *path: PathElement) -> Spot | None:
        """Where ``path`` was written in the manifest's text, if it came from text."""
        return self._spots.get(path)

    @property
    def warnings(self) -> list[Problem]:
        """What loading let pass but the author should hear of (unknown keys, ignored)."""
        return list(self._warnings)

    def warn(self, warnings: list[Problem]) -> None:
        """Remember what loading let pass (see ``warnings``)."""
        self._warnings = list(warnings)

    def locate(self, spots: dict[Path, Spot]) -> None:
        """Remember where the manifest's keys were written (see ``spot``)."""
        self._spots = spots
