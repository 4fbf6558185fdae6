"""Running the real nix CLI on the demo set, the way the tests need it.

Builds go to the machine's real /nix/store (cached between runs), sandboxed, with no
substituters: nothing here reaches cache.nixos.org.
"""

import json
import subprocess
from pathlib import Path
from typing import Any

import nixfarm.demo

# sandbox-fallback=false: fail rather than quietly build unsandboxed if the sandbox breaks.
OPTIONS = (
    "--option",
    "sandbox",
    "true",
    "--option",
    "sandbox-fallback",
    "false",
    "--option",
    "substituters",
    "",
)

DEMO = nixfarm.demo.path()

# Every package that builds; broken, slow and bigdata have tests of their own.
ORDINARY = (
    "busybox",
    "hello",
    "libgreeting",
    "greet",
    "cowsay",
    "banner-font",
    "banner",
    "fortunes",
    "fortune",
    "tree",
    "motd",
    "bashInteractive",
    "coreutils",
    "nano",
    "moreutils",
)


def run(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing text output; never raises on a non-zero exit."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def build(*args: str, file: Path = DEMO, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`nix-build FILE ARGS...` without a result link."""
    return run("nix-build", str(file), "--no-out-link", *OPTIONS, *args, timeout=timeout)


def build_paths(*attributes: str, file: Path = DEMO, args: tuple[str, ...] = ()) -> list[Path]:
    """Build attributes, returning their output paths in order; fail loudly on error."""
    selectors = [arg for name in attributes for arg in ("-A", name)]
    done = build(*selectors, *args, file=file)
    assert done.returncode == 0, done.stderr
    return [Path(line) for line in done.stdout.split()]


def evaluate(expression: str) -> Any:
    """Evaluate a Nix expression strictly and return it as JSON data."""
    done = run("nix-instantiate", "--eval", "--strict", "--json", "--expr", expression)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def closure(path: Path) -> set[Path]:
    """The runtime closure of a store path."""
    done = run("nix-store", "--query", "--requisites", str(path))
    assert done.returncode == 0, done.stderr
    return {Path(line) for line in done.stdout.split()}


def references(path: Path) -> set[Path]:
    """The direct runtime references of a store path (itself excluded)."""
    done = run("nix-store", "--query", "--references", str(path))
    assert done.returncode == 0, done.stderr
    return {Path(line) for line in done.stdout.split()} - {path}


def nar_size(path: Path) -> int:
    """The NAR size of a store path, as Nix recorded it."""
    done = run("nix-store", "--query", "--size", str(path))
    assert done.returncode == 0, done.stderr
    return int(done.stdout)
