"""One typed, frozen settings object, loaded once.

Sources, later ones winning: built-in defaults, a TOML file, then ``NIXFARM_*``
environment variables, where ``__`` separates sections (``NIXFARM_STORAGE__KIND=s3``).
The file is ``--config FILE`` or ``NIXFARM_CONFIG``; without either, ``nixfarm.toml`` in
the data directory if there is one (``DEFAULT_FILE``). The data directory is
``--data-dir``, ``NIXFARM_DATA_DIR`` or ``./data`` (relative to the working directory).
Unknown keys and bad values are ``ConfigError``s that name the key, so a typo never
silently falls back to a default.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from nixfarm.errors import ConfigError

#: How ``nixfarm up`` hands its validated settings (JSON) to the server's worker.
SETTINGS_VARIABLE = "_NIXFARM_SETTINGS"
#: And how many worker processes serve the farm (``events.factory``).
WORKERS_VARIABLE = "_NIXFARM_WORKERS"

#: The configuration file read from the data directory when none is named.
DEFAULT_FILE = "nixfarm.toml"
#: The data directory when none is named, relative to the working directory.
DEFAULT_DATA_DIR = Path("./data")

# Variables the CLI reads for itself; they are not settings of the server.
CLI_VARIABLES = frozenset({"NIXFARM_URL", "NIXFARM_TOKEN", "NIXFARM_CONFIG"})


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StorageSettings(Section):
    kind: Literal["fs", "s3"] = "fs"
    #: Filesystem store root; empty means DATA_DIR/store.
    path: str = ""
    bucket: str = ""
    endpoint: str = ""
    region: str = "us-east-1"
    access_key_id: str = ""
    secret_access_key: str = ""
    prefix: str = ""
    #: Seconds a presigned download URL stays valid.
    presign_seconds: int = 3600


class CacheSettings(Section):
    #: How NARs uploaded by ``nixfarm push`` are stored.
    compression: Literal["zstd", "xz", "none"] = "zstd"
    zstd_level: int = 3
    #: Priority advertised in nix-cache-info (lower wins in Nix).
    priority: int = 40


class SourceSettings(Section):
    kind: Literal["none", "path", "git", "channel"] = "none"
    #: A local directory (``path``), a repository URL (``git``), a tarball URL (``channel``).
    location: str = ""
    #: Attribute-set file inside the source to import; default.nix when empty.
    entry: str = ""
    #: For a channel: the tarball's sha256, which pins it (only pinned channels are cached).
    sha256: str = ""


class RegistrySettings(Section):
    source: SourceSettings = SourceSettings()
    nix_timeout: float = 60.0
    layer_budget: int = 94
    compression: Literal["gzip", "zstd"] = "gzip"
    popularity_file: str = ""
    require_auth: bool = False
    #: Lifetime of the pull tokens ``/registry/token`` hands out (``expires_in``).
    token_seconds: int = 300

    @field_validator("token_seconds")
    @classmethod
    def _token_lifetime(cls, value: int) -> int:
        if not 1 <= value <= 86400:
            raise ValueError("expected 1 to 86400 seconds")
        return value


class EdgeSettings(Section):
    #: The web server in front of the app (see nixfarm/edge): ``nginx`` sends stored files
    #: with sendfile(2) and answers public caches' narinfos and warm registry manifests
    #: without Python; ``none`` serves everything from the app; ``auto`` is nginx when
    #: the binary is installed.
    server: Literal["auto", "nginx", "none"] = "auto"
    #: The nginx binary (a name on PATH or an absolute path).
    nginx: str = "nginx"
    #: nginx worker processes; 0: one per core.
    workers: int = 0
    #: Seconds nginx waits for a client's request headers, and between two reads of its
    #: body, before it closes the connection: a slow client (slowloris) holds a
    #: connection this long at most (nginx's own default is 60).
    client_header_seconds: int = Field(default=30, ge=1)
    client_body_seconds: int = Field(default=30, ge=1)


class JobSettings(Section):
    timeout_minutes: float = 45.0
    lease_seconds: float = 30.0
    network: bool = True
    #: Quotas of one job (docs/security.md): its home (a tmpfs: it counts against the
    #: job's memory too), its log (all tasks together; Hydra's maxLogSize), and its
    #: artifacts (builds.sr.ht: 8 files of at most 1 GiB each).
    home_bytes: int = 1024**3
    log_bytes: int = 64 * 1024**2
    artifacts: int = 8
    artifact_bytes: int = 1024**3
    #: Images and arches a manifest may ask for even before a runner offering them has
    #: registered; registered runners add theirs.
    images: tuple[str, ...] = ("nix",)
    arches: tuple[str, ...] = ("x86_64",)
    #: Trigger deliveries: tries, the first pause between them (doubling), and the
    #: time limit of one try.
    trigger_attempts: int = 3
    trigger_retry_seconds: float = 2.0
    trigger_timeout_seconds: float = 10.0
    #: Where email triggers are sent from and through.
    smtp_host: str = ""
    smtp_port: int = 25
    smtp_from: str = "nixfarm@localhost"
    smtp_starttls: bool = False
    smtp_user: str = ""
    smtp_password: str = ""
    #: Job slots of the runner ``nixfarm up`` embeds in the server; 0: none.
    embedded_runner_slots: int = 2
    #: When the farm is stopped (SIGTERM, Ctrl-C): seconds its running jobs get to end
    #: on their own before they are interrupted (and queued again once).
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)
    #: The sandbox of that runner's jobs: ``bwrap`` (a container) or ``vm`` (a qemu
    #: virtual machine, see docs/vm.md), or both, the preferred first (``vm,bwrap``):
    #: disk images (docs/images.md) always run in a VM, other images in the preferred.
    embedded_runner_sandbox: Literal["bwrap", "vm", "vm,bwrap", "bwrap,vm"] = "bwrap"
    #: Minutes a failed job's sandbox (and a ``shell: true`` job's, whatever its end) is
    #: kept for ``nixfarm shell`` (docs/jobs.md); 0: never kept, ``shell: true`` refused.
    shell_hold_minutes: float = Field(default=10.0, ge=0)
    #: VMs that runner keeps booted and unused for its next jobs (``vm`` sandbox; each
    #: used by one job, then destroyed; docs/vm.md), and the MiB of guest RAM they may
    #: hold together. 0: none, every job boots its VM.
    embedded_runner_vm_pool: int = Field(default=0, ge=0)
    embedded_runner_vm_pool_mib: int = Field(default=4096, ge=1)
    #: That runner installs the builds of the farm's image schedules by itself (fetched,
    #: checked, booted for the sanity check, installed atomically; docs/images.md), for
    #: the disk images it has, when it has the ``vm`` sandbox. ``nixfarm runner``:
    #: ``--image-updates``.
    embedded_runner_image_updates: bool = True
    #: The recipes those builds are checked against (a catalogue laid out as
    #: nixfarm/images/); "": nixfarm's own.
    embedded_runner_image_recipes: str = ""


class KeySettings(Section):
    """Keys every server of a farm must share (checked against fingerprints the database
    keeps). Each is the base64 of its 32 bytes, or a file holding them; by default a
    file in the data directory, made by the farm's first server."""

    #: Seals job secrets at rest and signs webhooks (base64; wins over the file).
    secrets: str = ""
    #: The file of the secrets key; empty means DATA_DIR/secrets.key.
    secrets_file: str = ""
    #: Signs the registry's short-lived pull tokens (base64; wins over the file).
    registry_token: str = ""
    #: The file of the registry token key; empty means DATA_DIR/registry-token.key.
    registry_token_file: str = ""


class OidcSettings(Section):
    """Signing in to the web UI through an OpenID Connect provider (docs/web.md).

    Off while ``issuer`` is empty. A person who signs in is mapped to a farm token:
    the ID token's ``claim`` (``email`` or ``sub``) is looked up in ``principals``,
    whose values are token names; the session then holds that token's scopes. Someone
    the table does not name is refused."""

    #: The provider's issuer URL; its discovery document is
    #: ``<issuer>/.well-known/openid-configuration``.
    issuer: str = ""
    client_id: str = Field(default="", validate_default=True)
    client_secret: str = ""
    #: The ID token claim that names the person: ``email`` (only when the provider
    #: says it is verified) or ``sub``.
    claim: Literal["email", "sub"] = "email"
    #: Claim value -> the name of the token whose scopes the person gets.
    principals: dict[str, str] = {}
    #: Seconds the provider's discovery document and keys are remembered.
    discovery_seconds: int = Field(default=3600, ge=0)

    @field_validator("issuer")
    @classmethod
    def _issuer_is_a_url(cls, value: str) -> str:
        if value and not value.startswith(("https://", "http://")):
            raise ValueError("expected the provider's URL, e.g. https://accounts.example.org")
        return value

    @field_validator("client_id")
    @classmethod
    def _client_with_issuer(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("issuer") and not value:
            raise ValueError("an issuer needs the client_id the provider gave this farm")
        return value

    @property
    def enabled(self) -> bool:
        return bool(self.issuer)


class WebSettings(Section):
    #: Hours a web sign-in lasts before the person signs in again.
    session_hours: float = Field(default=168.0, gt=0)
    oidc: OidcSettings = OidcSettings()
# --- ephemeral builders (docs/builders.md) -------------------------------------------

#: A builder pool's name: it goes into instance tags, labels and URLs.
POOL_NAME = r"[a-z0-9][a-z0-9-]{0,39}"
#: What a pool's builders do with themselves after a job (docs/builders.md).
Lifecycle = Literal["destroy-after-job", "keep-on-failure", "keep-always"]


class VultrSettings(Section):
    """The Vultr account builders of ``provider = "vultr"`` pools are created in."""

    #: The API key (wins over the file); sent only to ``api_url``.
    api_key: str = ""
    #: A file holding the API key (kept out of the configuration file).
    api_key_file: str = ""
    api_url: str = "https://api.vultr.com/v2"
    #: Time limit of one API call.
    request_seconds: float = Field(default=30.0, gt=0)
    #: Tries of one call answered 429 or 5xx (or not at all), backing off between them.
    attempts: int = Field(default=4, ge=1, le=20)
    #: The first pause between tries, doubled after each (with jitter).
    backoff_seconds: float = Field(default=0.5, ge=0)


class PoolSettings(Section):
    """One ``[[builders.pools]]``: where its machines come from, which queued jobs make
    the autoscaler create them, and how long they live."""

    name: str = Field(pattern=f"^{POOL_NAME}$")
    provider: Literal["vultr", "local"]
    #: The provider's region and plan (Vultr: ``ewr``, ``vc2-2c-4gb``).
    region: str = ""
    plan: str = ""
    #: What the machine boots: "" is nixfarm's netboot image (served per builder).
    image: str = ""
    #: The plan's price per hour, in the account's currency: the spend cap's unit.
    hourly_price: float = Field(default=0.0, ge=0)
    #: At most this many builders of the pool at once (0: the pool is switched off).
    max_instances: int = Field(default=1, ge=0, le=1000)
    #: Never run builders costing more than this per hour together (needs hourly_price).
    max_hourly_spend: float | None = Field(default=None, gt=0)
    #: The jobs it takes: their arch, one of these images, and every one of these tags.
    arch: str = "x86_64"
    job_images: tuple[str, ...] = ("nix",)
    job_tags: tuple[str, ...] = ()
    #: The caches its builders' jobs may push to; a job naming another cache is not
    #: taken by this pool.
    caches: tuple[str, ...] = ()
    #: Whether its builders may receive job secrets (a cloud machine, by default not).
    trusted: bool = False
    lifecycle: Lifecycle = "destroy-after-job"
    #: keep-on-failure: how long a builder whose job failed is kept for inspection.
    hold_seconds: float = Field(default=3600.0, ge=0)
    #: A builder without a job for this long is destroyed.
    idle_timeout_seconds: float = Field(default=300.0, gt=0)
    #: A builder older than this drains (takes no new job) and is destroyed.
    max_uptime_seconds: float = Field(default=6 * 3600.0, gt=0)
    #: A builder that has not enrolled this long after its creation is destroyed.
    boot_timeout_seconds: float = Field(default=900.0, gt=0)
    #: A job that lost this many of the pool's builders (their runners stopped or fell
    #: silent while it ran, and it was queued again) fails instead of waiting for one more.
    max_builders_per_job: int = Field(default=2, ge=1, le=100)
    #: This many builders in a row failing to come up (create refused, never enrolled,
    #: silent before a job) make the pool back off; 0: never.
    max_boot_failures: int = Field(default=3, ge=0, le=100)
    #: The first back-off; it doubles with every further failure, up to 16 times this.
    boot_backoff_seconds: float = Field(default=600.0, gt=0)

    @field_validator("job_images", "job_tags", "caches")
    @classmethod
    def _names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not v or len(v) > 128 or not v.isprintable() for v in value):
            raise ValueError("expected names of 1-128 printable characters")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PoolSettings:
        if self.max_hourly_spend is not None and self.hourly_price <= 0:
            raise ValueError(f"pool {self.name}: max_hourly_spend needs hourly_price, the "
                             "plan's price per hour")
        if not self.job_images:
            raise ValueError(f"pool {self.name}: job_images must name at least one image")
        return self


class BuilderSettings(Section):
    #: Ties the farm's cloud instances to it (their tags): "" is derived from the
    #: farm's public URL. Two farms sharing a cloud account need different ones.
    farm_id: str = Field(default="", pattern=r"^[a-z0-9-]{0,40}$")
    #: Whether this server may run the autoscaler and the reaper: one server of the
    #: farm does at a time, the one holding their lease in the database.
    autoscale: bool = True
    #: Seconds between two passes of the autoscaler and the reaper.
    interval_seconds: float = Field(default=10.0, gt=0)
    #: Lifetime of a builder's one-time enrollment token (minutes, not more than an hour).
    enroll_seconds: float = Field(default=600.0, ge=10, le=3600)
    #: An enrolled builder silent this long (no claim, no job lease renewed) is
    #: destroyed. More than a claim's longest wait (60 s).
    heartbeat_timeout_seconds: float = Field(default=300.0, gt=60)
    #: Make the builders' netboot image when the server starts (when it has pools), so
    #: that the first machine's firmware does not wait for it; else at the first boot.
    prepare_netboot: bool = True
    #: Directories of the server's own files that any jobs:submit token may release
    #: from (``nixfarm release --repo /path``); any other local path or file:// URL
    #: needs an admin token. Remote git URLs are open to jobs:submit.
    release_paths: tuple[Path, ...] = ()
    vultr: VultrSettings = VultrSettings()
    pools: tuple[PoolSettings, ...] = ()

    @field_validator("pools")
    @classmethod
    def _unique(cls, value: tuple[PoolSettings, ...]) -> tuple[PoolSettings, ...]:
        names = [p.name for p in value]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"two pools are called {name!r}")
        return value

    @field_validator("release_paths")
    @classmethod
    def _absolute(cls, value: tuple[Path, ...]) -> tuple[Path, ...]:
        for path in value:
            if not path.is_absolute():
                raise ValueError(f"{str(path)!r} is not an absolute path")
        return value

    def pool(self, name: str) -> PoolSettings | None:
        return next((p for p in self.pools if p.name == name), None)


class Settings(Section):
    data_dir: Path = DEFAULT_DATA_DIR
    listen: str = "127.0.0.1:8080"
    #: The URL clients reach the server at; derived from ``listen`` when empty.
    public_url: str = ""
    #: SQLAlchemy URL; empty means SQLite in the data dir.
    database_url: str = ""
    #: Redis URL for scale-out events; empty means in-process events.
    redis_url: str = ""
    #: Extra ``--option NAME VALUE`` pairs for every nix command the server runs.
    nix_options: dict[str, str] = {}
    storage: StorageSettings = StorageSettings()
    cache: CacheSettings = CacheSettings()
    registry: RegistrySettings = RegistrySettings()
    jobs: JobSettings = JobSettings()
    edge: EdgeSettings = EdgeSettings()
    keys: KeySettings = KeySettings()
    web: WebSettings = WebSettings()
    builders: BuilderSettings = BuilderSettings()

    @field_validator("listen")
    @classmethod
    def _listen_has_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:8080")
        return value

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.listen}").rstrip("/")

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir.resolve() / 'nixfarm.db'}"

    @property
    def storage_path(self) -> Path:
        return Path(self.storage.path) if self.storage.path else self.data_dir / "store"


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    for part in path[:-1]:
        node = tree.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{'.'.join(path)}: {part} is not a section", key=".".join(path))
        tree = node
    tree[path[-1]] = value


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _env_tree(environ: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith("NIXFARM_") or name in CLI_VARIABLES:
            continue
        if name == "NIXFARM_DATA_DIR":  # shared with the CLI: the embedded farm's dir
            _set_path(tree, ["data_dir"], value)
            continue
        path = [p.lower() for p in name.removeprefix("NIXFARM_").split("__")]
        _set_path(tree, path, value)
    return tree


def _describe(error: ValidationError, origin: str) -> ConfigError:
    first = error.errors()[0]
    key = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        return ConfigError(f"{origin}: unknown setting {key!r}", key=key)
    return ConfigError(f"{origin}: bad value for {key!r}: {first['msg']}", key=key)


def load(
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Load settings from defaults, ``path`` (TOML), the environment and ``overrides``.

    Raises ``ConfigError`` naming the offending key.
    """
    environ = os.environ if environ is None else environ
    if path is None and environ.get("NIXFARM_CONFIG"):
        path = Path(environ["NIXFARM_CONFIG"])
    implicit = False
    if path is None:
        data_dir = Path(str((overrides or {}).get("data_dir") or environ.get("NIXFARM_DATA_DIR")
                            or DEFAULT_DATA_DIR))
        if (data_dir / DEFAULT_FILE).is_file():
            path, implicit = data_dir / DEFAULT_FILE, True
    tree: dict[str, Any] = {}
    origin = "configuration"
    if path is not None:
        origin = str(path)
        try:
            with path.open("rb") as f:
                tree = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"configuration file {path} does not exist", key="") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}", key="") from None
        if implicit and "data_dir" in tree:
            # The file was found through the data directory: it cannot name another one.
            raise ConfigError(f"{path} sets data_dir, but it was read because it is in that "
                              "data directory; remove the key, or pass the file with --config",
                              key="data_dir")
    tree = _merge(tree, _env_tree(environ))
    tree = _merge(tree, overrides or {})
    try:
        return Settings.model_validate(tree)
    except ValidationError as e:
        raise _describe(e, origin) from None
