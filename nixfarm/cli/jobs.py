"""``nixfarm manifest check``, ``submit``, ``jobs``, ``logs``, ``cancel``, ``secret``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from nixfarm.cli.common import (
    DataDir,
    Exit,
    JobNumber,
    JsonOut,
    Token,
    Url,
    err,
    out,
    print_json,
    whole_number,
    with_client,
)
from nixfarm.client.api import Client
from nixfarm.client.jobs import JobsClient
from nixfarm.errors import Conflict, InvalidInput
from nixfarm.manifest import load_manifest
from nixfarm.wire.jobs import (
    FINAL_STATUSES,
    JOB_STATUSES,
    MAX_PAGE,
    JobStatus,
    JobSubmit,
    ManifestChecked,
    SecretKind,
    SecretOut,
    Visibility,
)
from nixfarm.wire.releases import ReleaseRequest

manifest_app = typer.Typer(help="Build manifests (.build.yml).", no_args_is_help=True)
secret_app = typer.Typer(help="Secrets for jobs: SSH keys, PGP keys, files.",
                         no_args_is_help=True)

Follow = Annotated[bool, typer.Option("--follow", "-f", help="Stream the log until the end.")]


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as e:
        raise InvalidInput(f"cannot read {path}: {e.strerror}", field="file") from None
    except UnicodeDecodeError:
        raise InvalidInput(f"{path} is not UTF-8 text", field="file") from None


def _warn(warnings: list[str]) -> None:
    for warning in warnings:
        err.print(f"warning: {warning}", markup=False)


@manifest_app.command("check")
def check(file: Path, url: Url = None, token: Token = None, data_dir: DataDir = None) -> None:
    """Check a manifest as the server would at submit, without submitting it: the same
    refusals (oauth, shell, an image no runner offers...) and warnings. Without a server
    (--url, --data-dir), its format only."""
    text = _read(file)
    if not url and not data_dir:
        manifest = load_manifest(text, name=str(file))
        _warn([str(w) for w in manifest.warnings])
        out.print(f"{file}: valid format ({len(manifest.tasks)} tasks, image "
                  f"{manifest.image}); not checked against a server (pass --url or "
                  "--data-dir to hear what submit would say)", markup=False)
        return

    async def work(c: Client) -> ManifestChecked:
        return await JobsClient(c).check(text)

    checked = with_client(url, token, data_dir, work)
    _warn(checked.warnings)
    out.print(f"{file}: valid ({len(checked.tasks)} tasks, image {checked.image})",
              markup=False)


async def _follow(jobs: JobsClient, job_id: int, to: Console = out) -> str:
    """Print the job's logs as they come (to ``to``); its final status."""
    current: object = ()
    status = ""
    async for kind, data in jobs.follow(job_id):
        if kind == "log":
            if data["task"] != current:
                current = data["task"]
                header = "setup" if current is None else f"task {current}"
                to.print(f"[#{job_id} {header}]", markup=False)
            to.out(data["text"], end="", highlight=False)
        elif kind == "job" and data.get("status") == "queued" and data.get("reason"):
            err.print(f"job {job_id}: {data['reason']}", markup=False)  # an interruption
        elif kind == "end":
            status = str(data["status"])
    if not status:
        status = (await jobs.get(job_id)).status
    return status


def _finish(status: str, job_id: int, reason: str | None) -> None:
    err.print(f"job {job_id} {status}" + (f": {reason}" if reason else ""), markup=False)
    if status != "success":
        raise Exit(1)


def submit(
    file: Path,
    follow: Follow = False,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Repeat for several.")] = None,
    note: Annotated[str | None, typer.Option(help="A note shown with the job.")] = None,
    visibility: Annotated[str, typer.Option(help="public, unlisted or private.")] = "private",
    execute: Annotated[bool, typer.Option(help="Queue now (--no-execute: pending).")] = True,
    json_out: Annotated[bool, typer.Option(
        "--json", help="Print the job as JSON (with --follow: as it ended, after its "
                       "log) instead of its id and URL.")] = False,
    url: Url = None, token: Token = None, data_dir: DataDir = None,
) -> None:
    """Submit a manifest; print the job's id and URL (and, with --follow, its log)."""
    text = _read(file)
    if visibility not in ("public", "unlisted", "private"):
        raise InvalidInput("--visibility must be public, unlisted or private",
                           field="visibility")
    vis: Visibility = visibility  # type: ignore[assignment]

    async def work(c: Client) -> tuple[int, str, str | None]:
        jobs = JobsClient(c)
        job = await jobs.submit(JobSubmit(manifest=text, tags=tag or [], note=note,
                                          execute=execute, visibility=vis))
        _warn(job.warnings)
        if not json_out:
            out.print(f"{job.id} {job.url}", markup=False)
        if not follow:
            if json_out:
                print_json(job)
            return job.id, "", None
        # The log goes to stderr when stdout is for the JSON document.
        status = await _follow(jobs, job.id, err if json_out else out)
        ended = await jobs.get(job.id)
        if json_out:
            print_json(ended)
        return job.id, status, ended.reason

    job_id, status, reason = with_client(url, token, data_dir, work)
    if follow:
        _finish(status, job_id, reason)


def release(
    repo: Annotated[str, typer.Option(
        help="The git repository: any URL the server can fetch, or a path on the server.")],
    rev: Annotated[str, typer.Option(help="The commit, branch or tag to build.")],
    cache: Annotated[str, typer.Option(help="The cache the outputs and build logs go to.")],
    file: Annotated[str, typer.Option(help="The expression, relative to the repository.")
                    ] = "release.nix",
    attr: Annotated[str, typer.Option(help="Build only this attribute (nix-build -A).")] = "",
    package: Annotated[list[str] | None, typer.Option(
        help="A package of the farm's Nix package set for the build's image (repeatable; "
             "default coreutils).")] = None,
    pool: Annotated[str | None, typer.Option(
        help="The builder pool to build on (default: the first that takes the job).")
                    ] = None,
    argstr: Annotated[list[str] | None, typer.Option(
        "--argstr", metavar="NAME=VALUE",
        help="A string argument of the expression's function (nix-build --argstr; "
             "repeatable).")] = None,
    follow: Follow = False,
    url: Url = None, token: Token = None, data_dir: DataDir = None,
) -> None:
    """Build a repository's release.nix at a revision on a fresh builder, and push the
    outputs and their build logs to a cache, signed by the server (docs/builders.md)."""
    args: dict[str, str] = {}
    for given in argstr or []:
        name, equals, value = given.partition("=")
        if not equals:
            raise typer.BadParameter(f"{given!r} is not NAME=VALUE", param_hint="--argstr")
        args[name] = value
    body = ReleaseRequest(repo=repo, rev=rev, file=file, attr=attr, cache=cache,
                          packages=package if package else ["coreutils"], pool=pool,
                          args=args)

    async def work(c: Client) -> tuple[int, str, str | None]:
        jobs = JobsClient(c)
        job = await jobs.release(body)
        out.print(f"{job.id} {job.url}", markup=False)
        if not follow:
            return job.id, "", None
        status = await _follow(jobs, job.id)
        return job.id, status, (await jobs.get(job.id)).reason

    job_id, status, reason = with_client(url, token, data_dir, work)
    if follow:
        _finish(status, job_id, reason)


def jobs(
    status: Annotated[JobStatus | None, typer.Option(
        help=f"Only jobs with this status: {', '.join(JOB_STATUSES)}.",
        show_default=False)] = None,
    mine: Annotated[bool, typer.Option("--mine", help="Only your own jobs.")] = False,
    limit: Annotated[int, typer.Option(help=f"At most this many (1 to {MAX_PAGE}).",
                                       metavar="N", parser=whole_number(1, MAX_PAGE))] = 20,
    json_out: JsonOut = False,
    url: Url = None, token: Token = None, data_dir: DataDir = None,
) -> None:
    """List recent jobs, newest first."""
    page = with_client(url, token, data_dir,
                       lambda c: JobsClient(c).page(status, mine, limit))
    if json_out:
        print_json(page.jobs)
        return
    table = Table("id", "status", "image", "tags", "owner", "created", box=None)
    for j in page.jobs:
        table.add_row(str(j.id), j.status, j.image, ",".join(j.tags), j.owner,
                      j.created_at.strftime("%Y-%m-%d %H:%M:%S"))
    out.print(table)


def logs(
    job: JobNumber,
    follow: Follow = False,
    url: Url = None, token: Token = None, data_dir: DataDir = None,
) -> None:
    """Print a job's logs (setup, then each task); -f follows them live and, as
    submit --follow, exits 1 unless the job succeeds."""
    async def work(c: Client) -> tuple[str, str | None]:
        client = JobsClient(c)
        if follow:
            return await _follow(client, job), (await client.get(job)).reason
        view = await client.get(job)
        for header, log_url in [("setup", view.setup_log_url),
                                *((f"task {t.name}", t.log_url) for t in view.tasks)]:
            out.print(f"[#{job} {header}]", markup=False)
            async for chunk in client.log(log_url):
                out.out(chunk.decode(errors="replace"), end="", highlight=False)
        return view.status, view.reason

    status, reason = with_client(url, token, data_dir, work)
    if follow:
        _finish(status, job, reason)
    elif status in FINAL_STATUSES:
        err.print(f"job {job} {status}" + (f": {reason}" if reason else ""), markup=False)


def cancel(job: JobNumber, url: Url = None, token: Token = None,
           data_dir: DataDir = None) -> None:
    """Cancel a job; a running one is stopped on its runner. A job that already ended
    is left as it is, and that is no error (exit 0): it is not running either way."""
    async def work(c: Client) -> tuple[str, bool]:
        client = JobsClient(c)
        try:
            return (await client.cancel(job)).status, True
        except Conflict:
            view = await client.get(job)
            if view.status not in FINAL_STATUSES:
                raise
            return view.status, False

    status, cancelled = with_client(url, token, data_dir, work)
    if cancelled:
        out.print(f"job {job} {status}", markup=False)
    else:
        out.print(f"job {job} already ended: {status}", markup=False)


@secret_app.command("create")
def secret_create(
    name: str,
    file: Annotated[Path, typer.Argument(help="The file holding the value.")],
    kind: Annotated[str, typer.Option(help="file, ssh_key or pgp_key.")] = "file",
    path: Annotated[str | None, typer.Option(
        help="For a file secret: where it goes in the sandbox, '~/...' (quoted: ~ is the "
             "build user's home, not yours) or /....")] = None,
    mode: Annotated[str | None, typer.Option(help="For a file secret: octal mode.")] = None,
    url: Url = None, token: Token = None, data_dir: DataDir = None,
) -> None:
    """Store a secret (encrypted on the server); print its UUID."""
    if kind not in ("file", "ssh_key", "pgp_key"):
        raise InvalidInput("--kind must be file, ssh_key or pgp_key", field="kind")
    try:
        data = file.read_bytes()
        mode_bits = int(mode, 8) if mode is not None else None
    except OSError as e:
        raise InvalidInput(f"cannot read {file}: {e.strerror}", field="file") from None
    except ValueError:
        raise InvalidInput(f"--mode {mode!r} is not an octal mode", field="mode") from None
    secret_kind: SecretKind = kind  # type: ignore[assignment]

    async def work(c: Client) -> SecretOut:
        return await JobsClient(c).create_secret(name, secret_kind, data, path, mode_bits)

    print(with_client(url, token, data_dir, work).uuid)


@secret_app.command("list")
def secret_list(json_out: JsonOut = False, url: Url = None, token: Token = None,
                data_dir: DataDir = None) -> None:
    """List your secrets (never their values)."""
    async def work(c: Client) -> list[SecretOut]:
        return await JobsClient(c).secrets()

    secrets = with_client(url, token, data_dir, work)
    if json_out:
        print_json(secrets)
        return
    table = Table("uuid", "name", "kind", "path", "mode", box=None)
    for s in secrets:
        table.add_row(s.uuid, s.name, s.kind, s.path or "",
                      f"{s.mode:o}" if s.mode is not None else "")
    out.print(table)


@secret_app.command("delete")
def secret_delete(ident: str, url: Url = None, token: Token = None,
                  data_dir: DataDir = None) -> None:
    """Delete a secret by UUID or name."""
    async def work(c: Client) -> SecretOut:
        return await JobsClient(c).delete_secret(ident)

    gone = with_client(url, token, data_dir, work)
    out.print(f"deleted {gone.name} ({gone.uuid})", markup=False)
