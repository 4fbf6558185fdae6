"""The import boundaries of docs/design.md, enforced: import-linter's contracts in
pyproject.toml, run over the tree as it is, and over a copy with a forbidden import
added, which they must refuse (a check that cannot fail would prove nothing)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` over the ``nixfarm`` package found in ``root``."""
    return subprocess.run([LINT_IMPORTS, "--no-cache"], cwd=root, capture_output=True,
                          text=True, timeout=300, env={"PYTHONPATH": str(root),
                                                       "PATH": "/usr/bin:/bin"})


def _contracts() -> list[dict[str, object]]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    contracts: list[dict[str, object]] = config["contracts"]
    return contracts


def test_the_tree_keeps_every_contract() -> None:
    done = _lint(REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(_contracts())} kept, 0 broken" in done.stdout


def test_every_part_has_its_place_in_the_layers() -> None:
    """A new top-level module or package is placed in the layers, not left unchecked."""
    layers = next(c for c in _contracts() if c["type"] == "layers")["layers"]
    assert isinstance(layers, list)
    placed = {name.strip() for layer in layers for name in layer.split("|")}
    parts = {f"nixfarm.{p.stem}" for p in (REPO / "nixfarm").glob("*.py")
             if p.stem != "__init__"}
    parts |= {f"nixfarm.{p.parent.name}" for p in (REPO / "nixfarm").glob("*/__init__.py")}
    assert parts - placed == set(), "place these in pyproject.toml's layers and design.md"
    assert placed - parts == set(), "the layers name parts that are gone"


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    skip = shutil.ignore_patterns("__pycache__", "*.nix")

    def ignore(directory: str, names: list[str]) -> set[str]:
        # The image recipes are data (and alias symlinks): only nixfarm.images' code.
        if Path(directory).name == "images":
            return {n for n in names if n != "__init__.py"}
        return set(skip(directory, names))

    shutil.copytree(REPO / "nixfarm", root / "nixfarm", ignore=ignore)
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


@pytest.mark.parametrize(("module", "line", "contract"), [
    # The embedded runner reaching for the farm's start-up: a layer upside down.
    ("runner/embedded.py", "from nixfarm import bootstrap",
     "Parts import only the parts below them"),
    # A runner reading the database: the security model of the runner protocol.
    ("runner/steps.py", "import nixfarm.db.models",
     "Runners use the server's HTTP API, never its database"),
    # The edge reaching into the cache it publishes for.
    ("edge/nginx.py", "import nixfarm.cache.service",
     "The edge knows neither the cache nor the registry"),
    # Format code learning HTTP.
    ("nix/narinfo.py", "import starlette.responses",
     "Format code and wire models know no HTTP server"),
])
def test_a_forbidden_import_is_caught(tree_copy: Path, module: str, line: str,
                                      contract: str) -> None:
    source = tree_copy / "nixfarm" / module
    kept = source.read_text()
    source.write_text(kept + f"\n{line}  # deliberately forbidden\n")
    try:
        done = _lint(tree_copy)
    finally:
        source.write_text(kept)
    assert done.returncode == 1, done.stdout + done.stderr
    # "NAME BROKEN", or "NAME BROKEN (1 ignored import)" for a contract with exceptions.
    broken = [m[1] for row in done.stdout.splitlines()
              if (m := re.fullmatch(r"(.+) BROKEN( \(\d+ ignored imports?\))?", row))]
    assert contract in broken, done.stdout
    # It names the very import that was added, at its line (so it read the copy).
    importer = re.escape(f"nixfarm.{module[:-3].replace('/', '.')}")
    added_at = len(kept.splitlines()) + 2
    assert re.search(rf"{importer} -> \S+ \(l\.{added_at}\)", done.stdout), done.stdout
