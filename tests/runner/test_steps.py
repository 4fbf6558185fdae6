"""A job through the steps, end to end: real bwrap, real nix, real git."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import anyio
import pytest

from nixfarm.images import Recipe
from nixfarm.manifest import load_manifest
from nixfarm.runner.roots import Catalogue, Images
from nixfarm.runner.sandbox import BwrapSandbox, SandboxSpec
from nixfarm.runner.steps import STEPS, JobContext, Recorder, Secret, run_job
from tests.runner.test_sandbox import sandbox_pids

pytestmark = pytest.mark.anyio
SECRET = "correct-horse-battery-staple"


def new_sandbox(spec: SandboxSpec) -> BwrapSandbox:
    return BwrapSandbox(spec)


def git_repo(path: Path) -> Path:
    path.mkdir()
    (path / "README").write_text("from the repository\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}  # fmt: skip
    for args in (["init", "-q", "-b", "main"], ["add", "README"], ["commit", "-qm", "first"]):
        subprocess.run(["git", *args], cwd=path, env=env, check=True)
    return path


def context(images: Images, tmp_path: Path, manifest: str, **kwargs: object) -> JobContext:
    logs: list[tuple[str | None, str]] = []
    ctx = JobContext(
        manifest=load_manifest(manifest), images=images, new_sandbox=new_sandbox,
        log=lambda task, line: logs.append((task, line)), report=Recorder(),
        work_dir=tmp_path, network=False, **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip
    ctx.logs = logs  # type: ignore[attr-defined]
    return ctx


async def test_three_tasks_with_environment_secret_source_and_artifact(
    images: Images, demo_root: Path, tmp_path: Path
) -> None:
    repo = git_repo(tmp_path / "project")
    manifest = f"""
image: demo/latest
sources:
  - file://{repo}
environment:
  GREETING: hello there
  COUNT: 3
  DEBUG: true
secrets:
  - deploy-token
tasks:
  - setup: |
      echo "$GREETING, count $COUNT, debug $DEBUG"
      cat project/README
  - use-secret: |
      cat ~/.token
      echo "token is $(cat ~/.token)"
      ls -l ~/.token
  - build: |
      mkdir -p out
      echo built > out/result.txt
artifacts:
  - out/result.txt
"""
    secret = Secret("deploy-token", "file", SECRET.encode(), path="~/.token", mode=0o600)
    ctx = context(images, tmp_path, manifest, secrets=[secret], local_sources=[tmp_path])
    result = await run_job(ctx)
    logs = ctx.logs  # type: ignore[attr-defined]
    assert result.status == "success", (result, logs)
    report: Recorder = ctx.report  # type: ignore[assignment]
    assert report.steps() == {name: "success" for name, _ in STEPS}
    assert report.tasks() == {"setup": "success", "use-secret": "success", "build": "success"}
    task_lines = {task: [line for t, line in logs if t == task] for task in report.tasks()}
    assert "hello there, count 3, debug true" in task_lines["setup"]
    assert "from the repository" in task_lines["setup"]
    assert "+ cat project/README" in task_lines["setup"]  # set -x
    assert "token is ********" in task_lines["use-secret"]
    assert any(line.startswith("-rw-------") for line in task_lines["use-secret"])
    assert not any(SECRET in line for _, line in logs)
    assert report.artifacts["out/result.txt"].read_text() == "built\n"


async def test_complete_build_skips_the_remaining_tasks(images: Images, tmp_path: Path) -> None:
    manifest = """
image: demo/latest
tasks:
  - first: echo one
  - done: |
      complete-build
      echo not-printed
  - never: echo never
"""
    ctx = context(images, tmp_path, manifest)
    result = await run_job(ctx)
    report: Recorder = ctx.report  # type: ignore[assignment]
    assert result.status == "success"
    assert report.tasks() == {"first": "success", "done": "success", "never": "skipped"}
    assert not any(line == "not-printed" for _, line in ctx.logs)  # type: ignore[attr-defined]


async def test_a_failed_task_fails_the_tasks_step(images: Images, tmp_path: Path) -> None:
    manifest = """
image: demo/latest
tasks:
  - bad: cat /etc/shadow
  - after: echo after
artifacts:
  - x
"""
    ctx = context(images, tmp_path, manifest)
    result = await run_job(ctx)
    report: Recorder = ctx.report  # type: ignore[assignment]
    assert (result.status, result.step) == ("failed", "tasks")
    assert "task 'bad' exited with status 1" in result.message
    assert report.tasks() == {"bad": "failed", "after": "skipped"}
    assert report.steps()["artifacts"] == "skipped" and report.steps()["shutdown"] == "success"


async def test_packages_need_a_package_manager(images: Images, tmp_path: Path) -> None:
    ctx = context(images, tmp_path, "image: demo/latest\npackages: [git]\ntasks:\n  - a: 'true'\n")
    result = await run_job(ctx)
    assert result.step == "packages"
    assert result.message == (
        "step 'packages' failed: installing packages is not supported for image demo/latest"
    )


async def test_nix_image_with_hello(images: Images, tmp_path: Path) -> None:
    ctx = context(images, tmp_path, "image: nix\npackages: [hello]\ntasks:\n  - hi: hello\n")
    result = await run_job(ctx)
    assert result.status == "success", ctx.logs  # type: ignore[attr-defined]
    assert ("hi", "Hello, world!") in ctx.logs  # type: ignore[attr-defined]
    assert ctx.image is not None and ctx.image.name == "nix"
    assert all(p.startswith("/nix/store/") for p in ctx.image.store_paths)
    assert len(ctx.image.store_paths) == 2  # hello and busybox, nothing else of the store


async def test_a_nix_image_of_the_catalogue_composes_its_packages_and_the_jobs(
        images: Images, tmp_path: Path) -> None:
    """nix/base (docs/images.md): bashInteractive and coreutils, plus the job's hello."""
    assert "nix/base" in images.names(("bwrap",))
    ctx = context(images, tmp_path, "image: nix/base\npackages: [hello]\ntasks:\n"
                                    "  - hi: bash -c 'echo from bash; hello'\n")
    result = await run_job(ctx)
    assert result.status == "success", ctx.logs  # type: ignore[attr-defined]
    lines = [line for task, line in ctx.logs if task == "hi"]  # type: ignore[attr-defined]
    assert lines[1:] == ["from bash", "Hello, world!"], lines
    assert ctx.image is not None and ctx.image.name == "nix/base"
    assert {p.split("-", 1)[1].split("-")[0] for p in ctx.image.outputs} >= {
        "bash", "coreutils", "hello"}, ctx.image.outputs


async def test_cancelling_a_job_kills_it_and_cleans_up(images: Images, tmp_path: Path) -> None:
    ctx = context(images, tmp_path, "image: demo/latest\ntasks:\n  - long: sleep 1000\n")
    with anyio.move_on_after(1.5):
        await run_job(ctx)
    box = ctx.sandbox
    assert isinstance(box, BwrapSandbox) and box.state_dir is not None
    assert not box.state_dir.exists()
    assert not sandbox_pids("sleep 1000")


async def test_nested_clone_directory_and_numbers_in_the_environment(
    images: Images, tmp_path: Path
) -> None:
    # What real builds.sr.ht manifests do: clone into vendor/lib, export numbers.
    repo = git_repo(tmp_path / "lib")
    manifest = f"""
image: demo/latest
sources:
  - vendor/lib::file://{repo}
environment:
  PORT: 8080
  RATIO: 1.5
  VERSIONS: [3, 3.11]
tasks:
  - show: |
      cat vendor/lib/README
      echo "port $PORT ratio $RATIO versions $VERSIONS"
"""
    ctx = context(images, tmp_path, manifest, local_sources=[tmp_path])
    result = await run_job(ctx)
    logs = ctx.logs  # type: ignore[attr-defined]
    assert result.status == "success", (result, logs)
    lines = [line for task, line in logs if task == "show"]
    assert "from the repository" in lines
    assert "port 8080 ratio 1.5 versions 3 3.11" in lines


class CountedCatalogue(Catalogue):
    """The real catalogue, counting how often it is read."""

    reads = 0

    def entries(self) -> list[Recipe]:
        self.reads += 1
        return super().entries()


@pytest.mark.parametrize("image", ["demo/latest", "nix/base"])
async def test_a_job_reads_the_catalogue_once(images: Images, tmp_path: Path, image: str
                                              ) -> None:
    # The runner chooses the job's image (does it compose packages, so needs Nix?) and
    # the boot step prepares it from that one read: the catalogue is read once a job.
    catalogue = CountedCatalogue(images.catalogue.built_dir)
    counted = Images(catalogue, nix_source=images.nix_source, nix_options=images.nix_options)
    manifest = f"image: {image}\ntasks:\n  - a: echo read-once\n"
    choice = counted.choose(image, None)
    assert choice.composes == (image == "nix/base")
    ctx = context(counted, tmp_path, manifest, image_choice=choice)
    result = await run_job(ctx)
    assert result.status == "success", (result, ctx.logs)  # type: ignore[attr-defined]
    assert catalogue.reads == 1
