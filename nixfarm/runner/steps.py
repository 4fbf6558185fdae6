"""A job, as an explicit ordered list of named steps.

    boot, environment, secrets, repositories, packages, sources, tasks,
    artifacts, cache push, shutdown

Each step is a small async function over a ``JobContext``: the manifest, how to get
an image and a sandbox, a log sink and a reporter. ``run_job`` runs them in order;
the first failure (``StepFailed``, naming the step) ends the job, the steps after it
are reported ``skipped``, and ``shutdown`` always runs, even when the caller is
cancelled. A failed task is a failure of the ``tasks`` step; later tasks are
``skipped``, and so are artifacts (as on builds.sr.ht, only a successful job's
artifacts are kept).

Tasks run as ``build`` in its home, each as ``/bin/sh ~/.tasks/<name>``: the script
sources ``~/.buildenv`` (the job's environment), then ``set -xe``, then the manifest's
text. ``complete-build`` (on the PATH, in ``~/.nixfarm/bin``) leaves a marker and
exits 255; a task that ran it counts as a success, and the tasks after it are
skipped: the job ends early, successful.

``image: nix`` sandboxes get ``ctx.nix_client`` (Nix through the runner's daemon,
see ``nixd``); ``cache push`` calls ``ctx.push_cache`` (see ``cachepush``), and boot
refuses a job with ``cache:`` when there is none.

Every log line, of the setup log (task ``None``) and of each task, passes through
the job's ``Masker`` first: no secret value reaches the sink.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from nixfarm.errors import NixfarmError
from nixfarm.manifest import Manifest, Source
from nixfarm.masking import LineMasker, Masker
from nixfarm.nix import command
from nixfarm.runner.roots import NIX_IMAGE, ImageChoice, Images, PreparedImage
from nixfarm.runner.sandbox.base import (
    BUILD_HOME,
    DiskImage,
    Image,
    NixClient,
    NixClosure,
    RootDir,
    Sandbox,
    SandboxSpec,
    SandboxTimeout,
)
from nixfarm.runner.shielding import uncancelled

StepStatus = Literal["running", "success", "failed", "skipped"]
TaskStatus = Literal["pending", "running", "success", "failed", "skipped"]
JobStatus = Literal["success", "failed", "timeout", "cancelled", "interrupted"]

#: (task name, or None for the setup log; one line, no newline)
LogSink = Callable[[str | None, str], None]
SandboxFactory = Callable[[SandboxSpec], Sandbox]
CachePusher = Callable[["JobContext"], Awaitable[None]]

COMPLETE_MARKER = f"{BUILD_HOME}/.nixfarm/complete-build"
COMPLETE_BUILD = f"""#!/bin/sh
# complete-build: end this job now, successfully; the remaining tasks are skipped.
: > {COMPLETE_MARKER}
exit 255
"""


@dataclass
class StepFailed(NixfarmError):
    """Step ``step`` failed; ``message`` says how ("step 'sources' failed: ...")."""

    step: str = ""
    timed_out: bool = False


class Reporter(Protocol):
    """Where the runner reports progress (the job service, over HTTP)."""

    async def step(self, name: str, status: StepStatus) -> None: ...

    async def task(self, name: str, status: TaskStatus, exit_code: int | None = None) -> None: ...

    async def artifact(self, path: str, file: Path, size: int) -> None:
        """``path`` (as in the manifest) was copied out to the host ``file``."""


@dataclass
class LogLimitExceeded(NixfarmError):
    """The job's logs reached ``JobContext.log_limit``: the task printing is killed."""

    limit: int = 0


@dataclass(frozen=True)
class Secret:
    """A secret the job may use, decrypted; ``name`` is its UUID or name."""

    name: str
    kind: Literal["file", "ssh_key", "pgp_key"]
    value: bytes
    #: Where a file secret goes (``~/`` is the build user's home).
    path: str = ""
    mode: int = 0o600


@dataclass
class JobContext:
    """What the steps work on and what they leave for the next one."""

    manifest: Manifest
    images: Images
    new_sandbox: SandboxFactory
    log: LogSink
    report: Reporter
    #: A host directory of the runner's, where artifacts are copied out to.
    work_dir: Path
    secrets: Sequence[Secret] = ()
    #: Variables from the server (JOB_ID, JOB_URL, ...); the manifest's win.
    environment: Mapping[str, str] = field(default_factory=dict)
    network: bool = True
    memory_limit: int | None = 2 * 1024**3
    cpu_limit: float | None = None
    process_limit: int | None = 512
    #: Seconds the whole sandbox may live; None: no limit here (the caller cancels).
    timeout: float | None = None
    #: Roots under which ``file://`` sources may be cloned from (none by default).
    local_sources: Sequence[Path] = ()
    push_cache: CachePusher | None = None
    #: Nix for ``image: nix`` jobs (``nix-build`` through the runner's daemon).
    nix_client: NixClient | None = None
    #: Quotas (``wire.runners.JobLimits``): bytes of the home, of all logs together
    #: (None: no limit), artifacts and bytes of each.
    home_size: int | None = 1024**3
    log_limit: int | None = 64 * 1024**2
    max_artifacts: int = 8
    artifact_limit: int = 1024**3
    #: Says, from the job's result, whether its sandbox is kept (for shells) rather than
    #: shut down: then ``kept`` is set and shutting it down is the caller's business.
    keep_sandbox: Callable[[JobResult], bool] | None = None
    kept: bool = False
    #: The job's image as the catalogue has it, when the caller looked already (the
    #: runner does, to know whether it needs Nix); else ``boot`` looks.
    image_choice: ImageChoice | None = None
    # Filled in by the steps:
    image: PreparedImage | None = None
    sandbox: Sandbox | None = None
    completed_early: bool = False
    tasks: dict[str, TaskStatus] = field(default_factory=dict)
    masker: Masker = field(init=False)
    #: Takes a line of the setup log (masked on the way; see ``masking.LineMasker``).
    setup: LineMasker = field(init=False)

    logged: int = field(default=0, init=False)
    log_cut: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.masker = Masker(s.value for s in self.secrets)
        self.setup = self.masker.lines(lambda text: self.logged_line(None, text))

    def logged_line(self, task: str | None, text: str) -> None:
        """A masked line to the log, within ``log_limit``: the line that would pass it
        is replaced by a note saying where the log was cut, LogLimitExceeded is raised
        (from a sandbox's line callback, that kills the command printing), and every
        line after it is dropped."""
        if self.log_cut:
            return
        size = len(text.encode(errors="replace")) + 1
        if self.log_limit is not None and self.logged + size > self.log_limit:
            self.log_cut = True
            self.log(task, f"[nixfarm] log limit exceeded: the job's logs reached "
                           f"{self.log_limit} bytes; the log is cut here")
            raise LogLimitExceeded(f"log limit exceeded ({self.log_limit} bytes)",
                                   limit=self.log_limit)
        self.logged += size
        self.log(task, text)

    def box(self) -> Sandbox:
        if self.sandbox is None:
            raise StepFailed("The sandbox is not running.", step="boot")
        return self.sandbox


@dataclass(frozen=True)
class JobResult:
    status: JobStatus
    #: The step that failed, and why (empty on success).
    step: str = ""
    message: str = ""


def _fail(step: str, message: str) -> StepFailed:
    return StepFailed(f"step {step!r} failed: {message}", step=step)


# --- the steps -------------------------------------------------------------------


async def boot(ctx: JobContext) -> None:
    m = ctx.manifest
    if m.cache is not None and ctx.push_cache is None:
        raise _fail("boot", f"the job pushes to cache {m.cache!r}, which this runner cannot do")
    choice = ctx.image_choice
    if choice is None:
        choice = await asyncio.to_thread(ctx.images.choose, m.image, m.arch)
    packages = m.packages if choice.composes else []
    ctx.setup(f"Preparing image {m.image}" + (f" with {', '.join(packages)}" if packages else ""))
    try:
        ctx.image = await ctx.images.prepare_chosen(choice, packages, ctx.setup)
    except NixfarmError as e:
        raise _fail("boot", f"cannot prepare image {m.image}: {e.message}") from e
    image: Image = (DiskImage(ctx.image.root, "qcow2") if ctx.image.disk
                    else NixClosure(ctx.image.root, ctx.image.store_paths)
                    if ctx.image.store_paths else RootDir(ctx.image.root))  # fmt: skip
    spec = SandboxSpec(
        image, network=ctx.network,
        memory_limit=ctx.memory_limit, cpu_limit=ctx.cpu_limit, home_size=ctx.home_size,
        process_limit=ctx.process_limit, timeout=ctx.timeout,
        nix_client=ctx.nix_client if ctx.image.package_manager == NIX_IMAGE else None,
    )  # fmt: skip
    ctx.sandbox = ctx.new_sandbox(spec)
    await ctx.sandbox.boot()
    # A VM says how it runs (its accelerator) and how long it took to boot.
    how = getattr(ctx.sandbox, "description", "")
    ctx.setup(f"Booted {m.image} (network {'on' if ctx.network else 'off'})"
              + (f" in {how}" if how else ""))
    if ctx.image.functions is not None:
        # The image's functions (install, add_repository, ...) run in the guest.
        text = await asyncio.to_thread(ctx.image.functions.read_bytes)
        await ctx.box().put(FUNCTIONS_PATH, text, mode=0o644)
        if await _image_function(ctx, "boot", "boot") is None:
            ctx.setup(f"Image {m.image} has no boot function")


#: Where an image's functions file is put in the sandbox, and the ``sh -c`` script that
#: calls one (``sh -c CALL_FUNCTION FUNCTIONS_PATH NAME ARGS...``): exit 124 and "no
#: function NAME" when the image has none of that name.
FUNCTIONS_PATH = f"{BUILD_HOME}/.nixfarm/functions"
CALL_FUNCTION = (
    '. "$0" || exit 125; '
    'command -v "$1" >/dev/null 2>&1 || { echo "no function $1" >&2; exit 124; }; '
    '"$@"')


async def _image_function(ctx: JobContext, step: str, name: str, *args: str) -> int | None:
    """Run the image's function ``name`` with ``args`` as build, its output in the setup
    log; None when the image has none. A non-zero status fails ``step``."""
    if ctx.image is None or ctx.image.functions is None:
        return None
    lines: list[str] = []

    def line(text: str) -> None:
        lines.append(text)
        ctx.setup(text)

    status = await ctx.box().run(["/bin/sh", "-c", CALL_FUNCTION, FUNCTIONS_PATH, name, *args],
                                 line)  # fmt: skip
    if status == 124 and lines[-1:] == [f"no function {name}"]:
        return None
    if status != 0:
        raise _fail(step, f"{name} {' '.join(args)} exited with {status} in image "
                          f"{ctx.image.name}")  # fmt: skip
    return status


def _export(name: str, value: object) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, list):  # /bin/sh has no arrays: words, each quoted once
        text = " ".join(str(v) for v in value)
    else:
        text = str(value)
    return f"export {name}={shlex.quote(text)}\n"


async def environment(ctx: JobContext) -> None:
    variables: dict[str, object] = {**ctx.environment, **ctx.manifest.environment}
    text = "".join(_export(k, v) for k, v in variables.items())
    # Both at once: in a VM each put is a round trip to the guest's agent, which runs
    # them side by side (on a cold VM under TCG: ~0.1 s before the first task line).
    await asyncio.gather(
        ctx.box().put(f"{BUILD_HOME}/.buildenv", text.encode(), mode=0o644),
        ctx.box().put(f"{BUILD_HOME}/.nixfarm/bin/complete-build", COMPLETE_BUILD.encode(),
                      mode=0o755))  # fmt: skip
    ctx.setup(f"Exported {len(variables)} environment variable(s)")


def _home_path(path: str) -> str:
    return BUILD_HOME + path[1:] if path == "~" or path.startswith("~/") else path


async def secrets(ctx: JobContext) -> None:
    ssh_keys = 0
    for secret in ctx.secrets:
        if secret.kind == "file":
            await ctx.box().put(_home_path(secret.path), secret.value, mode=secret.mode)
        elif secret.kind == "ssh_key":
            path = f"{BUILD_HOME}/.ssh/{secret.name}"
            await ctx.box().put(path, secret.value, mode=0o600)
            if ssh_keys == 0:  # the first key is the default identity, as on builds.sr.ht
                await ctx.box().put(f"{BUILD_HOME}/.ssh/id_rsa", secret.value, mode=0o600)
            ssh_keys += 1
        else:
            path = f"{BUILD_HOME}/.nixfarm/pgp-{secret.name}.asc"
            await ctx.box().put(path, secret.value, mode=0o600)
            status = await ctx.box().run(
                ["/bin/sh", "-c", 'command -v gpg >/dev/null && gpg --batch --import "$1"',
                 "sh", path], ctx.setup)  # fmt: skip
            if status != 0:
                raise _fail("secrets", f"cannot import PGP key {secret.name} (no gpg in image?)")
        ctx.setup(f"Installed secret {secret.name} ({secret.kind})")


async def repositories(ctx: JobContext) -> None:
    for name, source in ctx.manifest.repositories.items():
        ctx.setup(f"Adding repository {name}: {source}")
        if await _image_function(ctx, "repositories", "add_repository", name, source) is None:
            image = ctx.image.name if ctx.image else ctx.manifest.image
            raise _fail("repositories", f"adding repositories is not supported for image {image}")


async def packages(ctx: JobContext) -> None:
    if not ctx.manifest.packages:
        return
    assert ctx.image is not None
    if ctx.image.package_manager == NIX_IMAGE:
        ctx.setup("Packages composed into the image: " + " ".join(ctx.image.outputs))
        return
    ctx.setup("Installing packages: " + " ".join(ctx.manifest.packages))
    if await _image_function(ctx, "packages", "install", *ctx.manifest.packages) is None:
        raise _fail("packages",
                    f"installing packages is not supported for image {ctx.image.name}")


async def sources(ctx: JobContext) -> None:
    for source in ctx.manifest.sources:
        if source.scm != "git":
            raise _fail("sources", f"cannot clone {source.url}: only git sources are supported")
        ctx.setup(f"Cloning {source.url} into ~/{source.directory}")
        if await ctx.box().run(["/bin/sh", "-c", "command -v git"], lambda _: None) == 0:
            status = await ctx.box().run(_clone_args(source, source.directory), ctx.setup)
            if status != 0:
                raise _fail("sources", f"git clone {source.url} exited with {status}")
        else:
            await _clone_on_host(ctx, source)


def _clone_args(source: Source, into: str) -> list[str]:
    args = ["git", "clone", "--quiet", "--", source.url, into]
    if source.ref:  # a branch, a tag or a commit: check it out after the clone
        return ["/bin/sh", "-c", 'git "$@" && cd "$5" && git checkout -q "$0"', source.ref,
                *args[1:]]  # fmt: skip
    return args


async def _clone_on_host(ctx: JobContext, source: Source) -> None:
    """Clone with the runner's git, then copy the tree in (the image has no git).

    It happens outside the sandbox, so it is held to the sandbox's rules: a
    ``file://`` URL only under ``local_sources``, and no network when it has none.
    """
    if source.url.startswith("file://"):
        where = await asyncio.to_thread(Path(source.url[len("file://") :]).resolve)
        roots = [await asyncio.to_thread(root.resolve) for root in ctx.local_sources]
        if not any(where.is_relative_to(root) for root in roots):
            raise _fail("sources", f"{source.url} is not a source this runner may clone")
    elif not ctx.network:
        raise _fail("sources", f"cannot clone {source.url}: the job has no network")
    with tempfile.TemporaryDirectory(prefix="nixfarm-source-", dir=ctx.work_dir) as staging:
        tree = Path(staging) / "tree"
        args = _clone_args(source, str(tree))
        env = {"GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1", "HOME": staging}
        try:
            await command.run(args, env=env, on_line=ctx.setup, timeout=600)
            archive = Path(staging) / "tree.tar"
            await command.run(["tar", "-cf", str(archive), "-C", str(tree), "."])
        except NixfarmError as e:
            raise _fail("sources", f"git clone {source.url} failed: {e.message}") from e
        target = f"{BUILD_HOME}/{source.directory}"
        status = await ctx.box().run(
            ["/bin/sh", "-c", 'mkdir -p "$1" && tar -xf - -C "$1"', "sh", target],
            ctx.setup, stdin=archive,
        )  # fmt: skip
        if status != 0:
            raise _fail("sources", f"cannot unpack {source.url} into ~/{source.directory}")


def _task_script(script: str) -> bytes:
    return f"#!/bin/sh\n. {BUILD_HOME}/.buildenv\nset -xe\n{script}\n".encode()


async def tasks(ctx: JobContext) -> None:
    box = ctx.box()
    for task in ctx.manifest.tasks:
        ctx.tasks[task.name] = "pending"
    for index, task in enumerate(ctx.manifest.tasks):
        path = f"{BUILD_HOME}/.tasks/{task.name}"
        await box.put(path, _task_script(task.script), mode=0o755)
        ctx.tasks[task.name] = "running"
        await ctx.report.task(task.name, "running")

        def out(text: str, name: str = task.name) -> None:
            ctx.logged_line(name, text)

        line = ctx.masker.lines(out)
        try:
            status = await box.run(["/bin/sh", path], line)
        except (SandboxTimeout, LogLimitExceeded) as e:
            await _finish_task(ctx, task.name, "failed", None)
            await _skip_tasks(ctx, index + 1)
            message = f"step 'tasks' failed: {e.message}"
            timed_out = isinstance(e, SandboxTimeout)
            raise StepFailed(message, step="tasks", timed_out=timed_out) from e
        completed = await box.run(["test", "-e", COMPLETE_MARKER], lambda _: None) == 0
        if status == 0 or completed:
            await _finish_task(ctx, task.name, "success", status)
            if completed:
                ctx.completed_early = True
                ctx.setup(f"Task {task.name} ran complete-build: skipping the remaining tasks")
                await _skip_tasks(ctx, index + 1)
                return
            continue
        # A command that hit a limit says only ENOSPC or "Killed": the log says which.
        reasons = await box.diagnose()
        with contextlib.suppress(LogLimitExceeded):  # the job fails anyway
            for reason in reasons:
                ctx.logged_line(task.name, f"[nixfarm] {reason}")
        await _finish_task(ctx, task.name, "failed", status)
        await _skip_tasks(ctx, index + 1)
        raise _fail("tasks", f"task {task.name!r} exited with status {status}"
                             + "".join(f"; {reason}" for reason in reasons))


async def _finish_task(ctx: JobContext, name: str, status: TaskStatus, code: int | None) -> None:
    ctx.tasks[name] = status
    await ctx.report.task(name, status, code)


async def _skip_tasks(ctx: JobContext, start: int) -> None:
    for task in ctx.manifest.tasks[start:]:
        await _finish_task(ctx, task.name, "skipped", None)


async def artifacts(ctx: JobContext) -> None:
    if len(ctx.manifest.artifacts) > ctx.max_artifacts:
        raise _fail("artifacts", f"the job names {len(ctx.manifest.artifacts)} artifacts; "
                                 f"this farm keeps at most {ctx.max_artifacts} per job")
    for artifact in ctx.manifest.artifacts:
        inside = _home_path(artifact)
        if not inside.startswith("/"):
            inside = f"{BUILD_HOME}/{inside}"
        name = inside.rstrip("/").rsplit("/", 1)[-1]
        out = ctx.work_dir / "artifacts"
        await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)
        try:
            size = await ctx.box().get(inside, out / name, limit=ctx.artifact_limit)
        except NixfarmError as e:
            raise _fail("artifacts", e.message) from e
        if size > ctx.artifact_limit:
            await asyncio.to_thread((out / name).unlink)
            raise _fail("artifacts", f"artifact {artifact} is larger than {ctx.artifact_limit} "
                                     "bytes, the most this farm keeps")
        ctx.setup(f"Artifact {artifact}: {size} bytes")
        await ctx.report.artifact(artifact, out / name, size)


async def cache_push(ctx: JobContext) -> None:
    if ctx.manifest.cache is None:
        return
    assert ctx.push_cache is not None  # boot refused the job otherwise
    ctx.setup(f"Pushing to cache {ctx.manifest.cache}")
    try:
        await ctx.push_cache(ctx)
    except NixfarmError as e:
        raise _fail("cache push", e.message) from e


async def shutdown(ctx: JobContext) -> None:
    if ctx.sandbox is not None:
        await ctx.sandbox.shutdown()


Step = tuple[str, Callable[[JobContext], Awaitable[None]]]
STEPS: list[Step] = [
    ("boot", boot),
    ("environment", environment),
    ("secrets", secrets),
    ("repositories", repositories),
    ("packages", packages),
    ("sources", sources),
    ("tasks", tasks),
    ("artifacts", artifacts),
    ("cache push", cache_push),
    ("shutdown", shutdown),
]


async def run_job(ctx: JobContext, steps: Sequence[Step] = STEPS) -> JobResult:
    """Run ``steps`` in order (see the module docstring); shutdown always runs last."""
    *work, last = steps
    result = JobResult("success")
    ctx.kept = False
    try:
        for index, (name, step) in enumerate(work):
            await ctx.report.step(name, "running")
            try:
                await step(ctx)
            except NixfarmError as e:
                failed = e if isinstance(e, StepFailed) else _fail(name, e.message)
                ctx.setup(failed.message)
                await ctx.report.step(name, "failed")
                for skipped, _ in work[index + 1 :]:
                    await ctx.report.step(skipped, "skipped")
                timed_out = isinstance(e, SandboxTimeout) or getattr(e, "timed_out", False)
                result = JobResult("timeout" if timed_out else "failed", name, failed.message)
                break
            await ctx.report.step(name, "success")
        ctx.kept = (ctx.sandbox is not None and ctx.keep_sandbox is not None
                    and ctx.keep_sandbox(result))
    finally:
        # Cancelled or not, the sandbox goes (unless kept whole, for shells): shield it
        # from a second cancellation.
        if not ctx.kept:
            with contextlib.suppress(NixfarmError):
                await uncancelled(_last(ctx, last))
    return result


async def _last(ctx: JobContext, step: Step) -> None:
    name, function = step
    await function(ctx)
    with contextlib.suppress(Exception):  # reporting may fail if we were cancelled
        await ctx.report.step(name, "success")


@dataclass
class Recorder:
    """A Reporter that keeps every report in order (for local runs and tests)."""

    events: list[tuple[str, ...]] = field(default_factory=list)
    artifacts: dict[str, Path] = field(default_factory=dict)

    async def step(self, name: str, status: StepStatus) -> None:
        self.events.append(("step", name, status))

    async def task(self, name: str, status: TaskStatus, exit_code: int | None = None) -> None:
        self.events.append(("task", name, status, str(exit_code)))

    async def artifact(self, path: str, file: Path, size: int) -> None:
        self.artifacts[path] = file
        self.events.append(("artifact", path, str(size)))

    def steps(self) -> dict[str, str]:
        return {e[1]: e[2] for e in self.events if e[0] == "step"}

    def tasks(self) -> dict[str, str]:
        return {e[1]: e[2] for e in self.events if e[0] == "task"}
