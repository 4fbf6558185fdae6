"""What a part of the farm needs from its host, checked before it starts.

A farm that starts without working Nix says "listening" and then fails every image
pull and every ``image: nix`` job with a message buried in the server log. So
``nixfarm up``, ``nixfarm server`` and ``nixfarm runner`` first ask the host for what
they will use — Nix building in its sandbox, nginx in front, bubblewrap's namespaces,
the database, Redis, the object store, a writable data directory — and refuse to start
with one sentence naming the missing piece and the command that fixes it.
``nixfarm doctor`` runs every check and prints each result.

Each check really does the thing (builds a derivation, starts a sandbox, connects),
with a short time limit, rather than looking for files that usually mean it would work.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import anyio

from nixfarm.config import Settings
from nixfarm.errors import ConfigError, NixfarmError, PrerequisiteMissing

NIX_TIMEOUT = 60.0
SERVICE_TIMEOUT = 5.0
NOBODY = 65534
BUILD_UID = 1000

#: The smallest derivation Nix really builds: a builtin builder (no shell needed on
#: the host), run like any other build, as a build user inside Nix's sandbox.
CHECK_DERIVATION = """derivation {
  name = "nixfarm-prerequisite-check";
  system = builtins.currentSystem;
  builder = "builtin:buildenv";
  derivations = [];
  manifest = "/dev/null";
}"""

SETUP_NIX = "scripts/setup-nix (as root; scripts/setup runs it)"


@dataclass(frozen=True)
class Finding:
    """One check's result: ``detail`` says what was found, ``fix`` how to mend it."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    #: False for a check whose failure only narrows what the farm does (doctor shows it).
    required: bool = True

    def sentence(self) -> str:
        return f"{self.detail}; fix: {self.fix}" if self.fix else self.detail


Check = Callable[[], Awaitable[Finding]]


def _first_error(output: str) -> str:
    """Nix's own explanation: the first ``error:`` line, else the last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("error:"):
            return line.removeprefix("error:").strip()
    return lines[-1] if lines else "no output"


async def _run(args: Sequence[str], limit: float,
               input: bytes | None = None) -> tuple[int, str]:
    """Exit status and combined output of a command (127 when it is not installed)."""
    try:
        with anyio.fail_after(limit):
            done = await anyio.run_process(list(args), input=input, check=False,
                                           stderr=subprocess.STDOUT)
    except FileNotFoundError:
        return 127, f"{args[0]} is not installed"
    except TimeoutError:
        return 124, f"{args[0]} did not finish in {limit:.0f} s"
    return done.returncode, done.stdout.decode(errors="replace")


async def nix(options: dict[str, str] | None = None) -> Finding:
    """Nix realises a derivation as a build user in its sandbox (``--check`` rebuilds
    it when the output exists already, so a later breakage is not hidden)."""
    if shutil.which("nix-store") is None or shutil.which("nix-instantiate") is None:
        return Finding("nix", False, "Nix is not installed",
                       "scripts/setup (or apt-get install nix-bin, then " + SETUP_NIX + ")")
    opts = [a for k, v in {"substituters": "", **(options or {})}.items()
            for a in ("--option", k, v)]
    started = time.monotonic()
    code, out = await _run(["nix-instantiate", "-", *opts], NIX_TIMEOUT,
                           input=CHECK_DERIVATION.encode())
    if code != 0:
        return _nix_failure("could not evaluate a derivation", out)
    drv = out.strip().splitlines()[-1]
    code, out = await _run(["nix-store", "--realise", drv, "--check", *opts], NIX_TIMEOUT)
    if code != 0 and "some outputs of" in out and "are not valid" in out:
        code, out = await _run(["nix-store", "--realise", drv, *opts], NIX_TIMEOUT)
    if code != 0:
        return _nix_failure("could not build in its sandbox", out)
    return Finding("nix", True, f"Nix built a derivation in its sandbox "
                                f"({time.monotonic() - started:.1f} s)")


def _nix_failure(what: str, output: str) -> Finding:
    reason = _first_error(output)
    fix = SETUP_NIX
    if "build-users-group" in reason and "does not exist" in reason:
        fix = f"{SETUP_NIX}, which creates the nixbld group and its build users"
    elif "sandbox" in reason or "namespace" in reason:
        fix = ("run on a host (or a container with CAP_SYS_ADMIN) where Nix's sandbox can "
               "create namespaces; see nixfarm doctor")
    return Finding("nix", False, f"Nix {what}: {reason}", fix)


async def nginx(settings: Settings) -> Finding:
    """nginx is installed when the edge is nginx (``auto`` without it serves from Python)."""
    from nixfarm.edge import nginx as edge_nginx

    mode = settings.edge.server
    try:
        found = edge_nginx.binary(settings)
    except ConfigError:
        found = None
    if found is not None:
        return Finding("nginx", True, f"nginx at {found} will serve in front of the app")
    if mode == "none":
        return Finding("nginx", True, "edge.server is 'none': the app serves everything",
                       required=False)
    fix = "apt-get install nginx (scripts/setup installs it), or set edge.server to 'none'"
    if mode == "auto":
        return Finding("nginx", False, "nginx is not installed, so the app serves every "
                                       "file itself (slower)", fix, required=False)
    return Finding("nginx", False, f"edge.server is 'nginx' but {settings.edge.nginx!r} "
                                   "is not installed", fix)


async def bubblewrap() -> Finding:
    """bubblewrap makes the namespaces a job's sandbox needs, as the unprivileged host
    user the sandbox runs as (nobody when the runner is root)."""
    missing = [t for t in ("bwrap", "nsenter", "setpriv", "slirp4netns")
               if shutil.which(t) is None]
    if missing:
        return Finding("bubblewrap", False, f"{', '.join(missing)} not installed",
                       "apt-get install bubblewrap util-linux slirp4netns (scripts/setup installs "
                       "them)")
    who = (["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups"]
           if os.geteuid() == 0 else ["setpriv"])
    code, out = await _run(
        [*who, "--no-new-privs", "bwrap", "--unshare-all", "--die-with-parent",
         "--uid", str(BUILD_UID), "--gid", str(BUILD_UID), "--ro-bind", "/", "/",
         "--proc", "/proc", "true"], SERVICE_TIMEOUT)
    if code != 0:
        return Finding("bubblewrap", False, f"bubblewrap cannot create a sandbox's "
                                            f"namespaces: {_first_line(out)}",
                       "allow unprivileged user namespaces (sysctl "
                       "kernel.unprivileged_userns_clone=1 and user.max_user_namespaces>0)")
    return Finding("bubblewrap", True, "bubblewrap creates a sandbox's namespaces")


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "no output")


async def data_dir(settings: Settings) -> Finding:
    """The data directory exists or can be made, and the farm can write into it."""
    path = settings.data_dir
    fix = f"make {path} writable by this user (uid {os.geteuid()}) or pass --data-dir"
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as e:
        return Finding("data dir", False, f"cannot write to the data directory {path} "
                                          f"({e.strerror or e})", fix)
    return Finding("data dir", True, f"the data directory {path} is writable")


async def database(settings: Settings) -> Finding:
    """PostgreSQL answers and lets the configured role in (SQLite needs the data dir only)."""
    if not settings.database_url:
        return Finding("database", True, "SQLite in the data directory")
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    from nixfarm.db.engine import async_url

    url = async_url(settings.database_url)
    shown = make_url(settings.database_url).render_as_string(hide_password=True)
    args: dict[str, object] = ({"connect_timeout": int(SERVICE_TIMEOUT)}
                               if url.get_backend_name() == "postgresql" else {})
    engine = create_async_engine(url, connect_args=args)
    try:
        with anyio.fail_after(SERVICE_TIMEOUT + 1):
            async with engine.connect():
                pass
    except Exception as e:  # every driver error is the same answer: it did not connect
        return Finding("database", False, f"cannot connect to the database {shown}: "
                                          f"{_db_reason(e)}",
                       "start PostgreSQL and create the role and database that "
                       "database_url names (see docs/scale-out.md), or fix database_url")
    finally:
        await engine.dispose()
    return Finding("database", True, f"the database {shown} answers")


def _db_reason(error: BaseException) -> str:
    text = str(getattr(error, "orig", None) or error) or type(error).__name__
    # psycopg repeats the attempt per address ("connection ... failed: ..."); keep one.
    text = re.sub(r"\s+", " ", text).strip()
    return text.split("; Multiple connection attempts failed.")[0][:300]


async def redis(settings: Settings) -> Finding:
    """Redis answers a PING when ``redis_url`` is set (scale-out events)."""
    if not settings.redis_url:
        return Finding("redis", True, "in-process events (no redis_url)")
    from redis.asyncio import Redis

    client = Redis.from_url(settings.redis_url, socket_connect_timeout=SERVICE_TIMEOUT,
                            socket_timeout=SERVICE_TIMEOUT)
    try:
        await client.ping()
    except Exception as e:  # connection refused, auth, timeout: all "does not answer"
        return Finding("redis", False, f"Redis at {settings.redis_url} does not answer: "
                                       f"{_first_line(str(e))}",
                       "start Redis (apt-get install redis-server) or fix redis_url")
    finally:
        await client.aclose()
    return Finding("redis", True, f"Redis at {settings.redis_url} answers")


async def storage(settings: Settings) -> Finding:
    """The S3 bucket answers (a filesystem store is covered by the data dir check)."""
    if settings.storage.kind != "s3":
        return Finding("storage", True, "files in the data directory")
    from nixfarm.storage.factory import open_store

    where = f"s3 bucket {settings.storage.bucket!r} at {settings.storage.endpoint or 'AWS'}"
    try:
        store = open_store(settings)
        with anyio.fail_after(SERVICE_TIMEOUT * 2):
            await store.stat(f"prerequisite-check/{uuid.uuid4().hex}")
    except (NixfarmError, TimeoutError, OSError) as e:
        return Finding("storage", False, f"the {where} does not answer: "
                                         f"{_first_line(str(e) or type(e).__name__)}",
                       "check [storage] endpoint, bucket and keys")
    return Finding("storage", True, f"the {where} answers")


def for_server(settings: Settings, *, runner: bool) -> list[Check]:
    """What ``nixfarm server`` (and ``up``, with its embedded ``runner``) depends on."""
    checks: list[Check] = [lambda: data_dir(settings), lambda: database(settings),
                           lambda: redis(settings), lambda: storage(settings),
                           lambda: nginx(settings)]
    # The registry runs Nix to compose images from its package source; the embedded
    # runner runs Nix for ``image: nix`` jobs and bubblewrap for every job.
    if runner or settings.registry.source.kind != "none":
        checks.append(lambda: nix(settings.nix_options))
    if runner:
        checks.append(bubblewrap)
    return checks


def for_runner(nix_options: dict[str, str], *, uses_nix: bool) -> list[Check]:
    """What ``nixfarm runner`` depends on."""
    checks: list[Check] = [bubblewrap]
    if uses_nix:
        checks.append(lambda: nix(nix_options))
    return checks


async def run_all(checks: Sequence[Check]) -> list[Finding]:
    """Every check, at once (each is bounded by its own time limit), in their order."""
    results: list[Finding | None] = [None] * len(checks)

    async def one(i: int, check: Check) -> None:
        results[i] = await check()

    async with anyio.create_task_group() as group:
        for i, check in enumerate(checks):
            group.start_soon(one, i, check)
    return [r for r in results if r is not None]


def require(part: str, checks: Sequence[Check]) -> None:
    """Run ``checks``; raise ``PrerequisiteMissing`` for the first required one that failed."""
    for finding in anyio.run(run_all, checks):
        if finding.required and not finding.ok:
            raise PrerequisiteMissing(f"nixfarm {part} cannot start: {finding.sentence()}",
                                      check=finding.name, fix=finding.fix)


def everything(settings: Settings) -> list[Check]:
    """Every check ``nixfarm doctor`` runs: a server with a runner, as ``nixfarm up``."""
    return for_server(settings, runner=True)
