"""A git repository made by a test: the demo package set and a release.nix over it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import nixfarm.demo

RELEASE_NIX = """\
# A release over the demo package set: a package new on every test run, built with the
# demo set's busybox package (in the job's image, as coreutils' dependency). A release
# may pass it a greeting (nixfarm release --argstr greeting ...).
{ greeting ? "" }:
let
  busybox = builtins.storePath "@BUSYBOX@";
  mkPackage = import ./demo/make.nix { system = builtins.currentSystem; inherit busybox; };
in {
  marked = mkPackage {
    pname = "release-@MARKER@";
    version = "1.0";
    description = "built by a nixfarm release";
    buildCommand = ''
      echo "building @MARKER@ for a release${greeting}"
      echo 'echo released @MARKER@' > released
      install_program released released
    '';
  };
}
"""


def release_repository(where: Path, marker: str, busybox: str) -> tuple[Path, str]:
    """A repository with release.nix on its second commit (the first has none): its
    path and the commit that has it. ``busybox``: the demo set's busybox package."""
    repo = where / "project"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    (repo / "README").write_text("a project\n")
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "first"], check=True)
    subprocess.run(["cp", "-r", str(nixfarm.demo.path()), str(repo / "demo")], check=True)
    text = RELEASE_NIX.replace("@MARKER@", marker).replace("@BUSYBOX@", busybox)
    (repo / "release.nix").write_text(text)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "release"], check=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True,
                            text=True).stdout.strip()
    # A later commit that breaks the release: the build must be of the one asked for.
    (repo / "release.nix").write_text("throw \"not this commit\"\n")
    subprocess.run([*git, "commit", "-qam", "broken"], check=True)
    return repo, commit
