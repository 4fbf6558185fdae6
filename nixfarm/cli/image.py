"""``nixfarm image``: the image catalogue of a runner on this machine (docs/images.md)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer

from nixfarm import images
from nixfarm.cli.common import DataDir, Token, Url, err, out, run, with_client
from nixfarm.cli.runner import DEFAULT_WORK_DIR
from nixfarm.errors import NixfarmError

app = typer.Typer(
    help="Build, check and install catalogue images for a runner.", no_args_is_help=True
)

WorkDir = Annotated[
    Path,
    typer.Option(
        help="The runner's work directory (as `nixfarm runner --work-dir`): its catalogue is "
        "images/ there."
    ),
]
Builds = Annotated[
    Path | None,
    typer.Option(
        help="Where built images are kept, one directory per recipe hash "
        "(default: image-builds/ in the work directory)."
    ),
]
Arch = Annotated[str, typer.Option(help="The image's architecture.")]
From = Annotated[
    Path | None,
    typer.Option(
        "--from",
        help="A built image's directory (holding root.img.qcow2), e.g. copied from "
        "another machine; default: the build of the current recipe.",
    ),
]


def _home(work_dir: Path) -> Path:
    from nixfarm.runner.workdir import runner_dir

    return runner_dir(work_dir)


Recipes = Annotated[
    Path | None,
    typer.Option(
        help="A catalogue of recipes laid out as nixfarm/images/ (default: the one nixfarm "
        "comes with)."
    ),
]
FromJob = Annotated[
    str | None,
    typer.Option(
        "--from-job",
        metavar="JOB",
        help="Install the image a job built (its artifacts root.img.qcow2 and recipe.sha256, "
        "as the distro's build.yml makes them): the job's id, or its URL.",
    ),
]


def _recipe(name: str, arch: str, recipes: Path | None = None) -> images.Recipe:
    try:
        return images.find(recipes or images.RECIPES, name, arch)
    except NixfarmError as e:
        raise typer.BadParameter(e.message, param_hint="IMAGE") from None


@app.command("list")
def list_(work_dir: WorkDir = DEFAULT_WORK_DIR, builds: Builds = None) -> None:
    """List the recipes, and what of each is built and installed here."""
    from nixfarm.runner import imaging

    home = _home(work_dir)
    catalogue = home / "images"
    installed = {(r.name, r.arch): r for r in images.read(catalogue)} if catalogue.is_dir() else {}
    rows = [("IMAGE", "ARCH", "KIND", "SANDBOXES", "STATE")]
    for recipe in images.read(images.RECIPES):
        name = recipe.name + (f" -> {recipe.alias_of}" if recipe.alias_of else "")
        state = {"root": "built on first use", "nix": "composed per job (--nix-source)"}.get(
            recipe.kind, "recipe only")
        if recipe.kind == "disk":
            if (
                imaging.build_dir(recipe, builds or home / "image-builds") / images.DISK_FILE
            ).is_file():
                state = "built"
            here = installed.get((recipe.name, recipe.arch))
            if here is not None and here.disk is not None:
                hash_file = here.directory / images.HASH_FILE
                current = (
                    hash_file.is_file()
                    and hash_file.read_text().strip() == images.recipe_hash(recipe)
                )
                state = "installed" + ("" if current else " (recipe changed since)")
        rows.append((name, recipe.arch, recipe.kind, ",".join(recipe.sandboxes), state))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        out.print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
            + "  "
            + row[4],
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


@app.command()
def build(
    image: str, arch: Arch = "x86_64", work_dir: WorkDir = DEFAULT_WORK_DIR, builds: Builds = None
) -> None:
    """Build IMAGE from its recipe (needs root; minutes), unless built already."""
    from nixfarm.runner import imaging

    recipe = _recipe(image, arch)
    where = builds or _home(work_dir) / "image-builds"

    async def work() -> Path:
        return await imaging.build(
            recipe, where, on_line=lambda line: err.print(line, markup=False, highlight=False)
        )

    built = run(work)
    out.print(str(built), markup=False)


@app.command()
def check(
    image: str,
    arch: Arch = "x86_64",
    work_dir: WorkDir = DEFAULT_WORK_DIR,
    builds: Builds = None,
    from_: From = None,
) -> None:
    """Boot a built IMAGE (else the one installed), run its sanity_check and
    poweroff_cmd."""
    _check(image, arch, _home(work_dir), builds, from_)


def _check(image: str, arch: str, home: Path, builds: Path | None, from_: Path | None,
           recipes: Path | None = None) -> Path:
    from nixfarm.runner import imaging

    recipe = _recipe(image, arch, recipes)
    built = from_ or imaging.build_dir(recipe, builds or home / "image-builds")
    installed = home / "images" / recipe.canonical / arch
    if from_ is None and not (built / images.DISK_FILE).is_file() and (
            installed / images.DISK_FILE).is_file():
        # No build of this recipe here, but an image installed (say, from a job, whose
        # build is named by its job): check that one.
        built = installed.resolve()
    if not (built / images.DISK_FILE).is_file():
        raise typer.BadParameter(
            f"{built} holds no {images.DISK_FILE}: run `nixfarm image build {image}` first",
            param_hint="IMAGE",
        )

    async def work() -> None:
        await imaging.check(
            built / images.DISK_FILE,
            recipe,
            vm_dir=home / "vm",
            on_line=lambda line: err.print(line, markup=False, highlight=False),
        )

    run(work)
    return built


@app.command()
def install(
    image: str,
    arch: Arch = "x86_64",
    work_dir: WorkDir = DEFAULT_WORK_DIR,
    builds: Builds = None,
    from_: From = None,
    from_job: FromJob = None,
    check_first: Annotated[
        bool, typer.Option("--check/--no-check", help="Run the sanity check before installing.")
    ] = True,
    recipes: Recipes = None,
    url: Url = None,
    token: Token = None,
    data_dir: DataDir = None,
) -> None:
    """Install a built IMAGE into the runner's catalogue, atomically (offered at once)."""
    from nixfarm.runner import imaging

    home = _home(work_dir)
    recipe = _recipe(image, arch, recipes)
    if from_job is not None:
        if from_ is not None:
            raise typer.BadParameter("give --from or --from-job, not both", param_hint="--from")
        from_ = _fetch_job_image(from_job, recipe, builds or home / "image-builds",
                                 url, token, data_dir)
    if check_first:
        built = _check(image, arch, home, builds, from_, recipes)
    else:
        built = from_ or imaging.build_dir(recipe, builds or home / "image-builds")
    try:
        # A job's build keeps its own name (by its job): see images.install.
        place = images.install(built, recipe, home / "images",
                               name=built.name if from_job is not None else None)
    except (OSError, NixfarmError) as e:
        err.print(
            f"error: cannot install {image}: {getattr(e, 'message', None) or e}", markup=False
        )
        raise typer.Exit(1) from None
    out.print(f"installed {recipe.canonical} ({arch}) at {place}", markup=False)


@app.command()
def manifest(image: str, arch: Arch = "x86_64", recipes: Recipes = None) -> None:
    """Print the manifest of the job that builds IMAGE: its distro's build.yml with this
    recipe in it (submit it, or schedule it with `nixfarm schedule create`)."""
    text = _rebuild_manifest(_recipe(image, arch, recipes))
    out.print(text, markup=False, highlight=False, end="", soft_wrap=True)


@app.command()
def schedule(
    image: str,
    cron: Annotated[str, typer.Option(
        "--cron", help="When, as cron has it (UTC), e.g. '0 3 * * 0' (Sundays at 03:00).")],
    arch: Arch = "x86_64",
    recipes: Recipes = None,
    url: Url = None,
    token: Token = None,
    data_dir: DataDir = None,
) -> None:
    """Rebuild IMAGE as a job at each slot of --cron (its `image manifest`, as a
    scheduled job; an admin's token); print the schedule's id. Runners with image
    updates on install each build themselves; others with `nixfarm image install
    IMAGE --from-job JOB`."""
    from nixfarm.client.api import Client
    from nixfarm.client.schedules import SchedulesClient
    from nixfarm.wire.schedules import ScheduleCreate, ScheduleOut

    recipe = _recipe(image, arch, recipes)
    text = _rebuild_manifest(recipe)
    # An image rebuild (admins only): runners install what its jobs build themselves.
    body = ScheduleCreate(cron=cron, manifest=text,
                          note=f"rebuild {recipe.canonical} ({arch})",
                          image=recipe.canonical, arch=arch)

    async def work(c: Client) -> ScheduleOut:
        return await SchedulesClient(c).create(body)

    made = with_client(url, token, data_dir, work)
    out.print(f"schedule {made.id}: next build of {image} at {made.next_at:%Y-%m-%d %H:%M:%S} "
              "UTC", markup=False)


def _rebuild_manifest(recipe: images.Recipe) -> str:
    """The manifest of the job that builds ``recipe`` (its distro's build.yml)."""
    from nixfarm.images import rebuild

    try:
        return rebuild.manifest(recipe)
    except NixfarmError as e:
        raise typer.BadParameter(e.message, param_hint="IMAGE") from None


def _job_reference(job: str, url: str | None) -> tuple[int, str | None]:
    """A job's id and the server's URL from ``JOB``: an id, or a job's URL (web or API)."""
    if job.isdigit():
        return int(job), url
    parsed = urlsplit(job)
    match = re.search(r"/jobs/(\d+)(?:/|$)", parsed.path)
    if not parsed.scheme or not parsed.netloc or match is None:
        raise typer.BadParameter(f"{job!r} is neither a job's id nor a job's URL",
                                 param_hint="--from-job")
    return int(match.group(1)), url or f"{parsed.scheme}://{parsed.netloc}"


def _fetch_job_image(job: str, recipe: images.Recipe, builds: Path, url: str | None,
                     token: str | None, data_dir: str | None) -> Path:
    """Download the image job ``job`` built into a build directory under ``builds``
    (named by the recipe hash the job built and the job); return that directory. The
    same code a runner runs for a scheduled build (``imaging.fetch_job_build``)."""
    from nixfarm.client.api import Client
    from nixfarm.client.jobs import JobsClient
    from nixfarm.runner import imaging

    job_id, url = _job_reference(job, url)

    async def work(c: Client) -> tuple[Path, str]:
        jobs = JobsClient(c)
        found = await jobs.get(job_id)
        if found.status != "success":
            raise images.ImageError(f"Job {job_id} is {found.status}: only a job that "
                                    f"succeeded has an image to install.")
        return await imaging.fetch_job_build(
            job_id, found.finished_at, {a.name: a for a in found.artifacts}, recipe, builds,
            jobs.download, same_recipe=False)

    target, digest = with_client(url, token, data_dir, work)
    if digest != images.recipe_hash(recipe):
        err.print(f"note: job {job_id} built {recipe.name} from another recipe ({digest}) "
                  f"than this machine's ({images.recipe_hash(recipe)}); `image list` will "
                  f"say so", markup=False)
    size = (target / images.DISK_FILE).stat().st_size
    err.print(f"fetched {recipe.name} from job {job_id} into {target} ({size} bytes)",
              markup=False)
    return target
