"""``nixfarm image``: the image catalogue of a runner on this machine (docs/images.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nixfarm import images
from nixfarm.cli.common import err, out, run
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


def _recipe(name: str, arch: str) -> images.Recipe:
    try:
        return images.find(images.RECIPES, name, arch)
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
    """Boot a built IMAGE, run its sanity_check and poweroff_cmd."""
    _check(image, arch, _home(work_dir), builds, from_)


def _check(image: str, arch: str, home: Path, builds: Path | None, from_: Path | None) -> Path:
    from nixfarm.runner import imaging

    recipe = _recipe(image, arch)
    built = from_ or imaging.build_dir(recipe, builds or home / "image-builds")
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
    check_first: Annotated[
        bool, typer.Option("--check/--no-check", help="Run the sanity check before installing.")
    ] = True,
) -> None:
    """Install a built IMAGE into the runner's catalogue, atomically (offered at once)."""
    from nixfarm.runner import imaging

    home = _home(work_dir)
    recipe = _recipe(image, arch)
    if check_first:
        built = _check(image, arch, home, builds, from_)
    else:
        built = from_ or imaging.build_dir(recipe, builds or home / "image-builds")
    try:
        place = images.install(built, recipe, home / "images")
    except (OSError, NixfarmError) as e:
        err.print(
            f"error: cannot install {image}: {getattr(e, 'message', None) or e}", markup=False
        )
        raise typer.Exit(1) from None
    out.print(f"installed {recipe.alias_of or recipe.name} ({arch}) at {place}", markup=False)
