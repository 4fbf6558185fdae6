"""What every daily tool has: a version, shell completion."""

from __future__ import annotations

import os
import subprocess
from importlib.metadata import version
from typing import Any

import pytest

from tests.fixtures.farm import NIXFARM


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([NIXFARM, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SHELL": "/bin/bash"})


def test_version() -> None:
    done = _run("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"nixfarm {version('nixfarm')}"


def test_bash_completion_script_completes_commands() -> None:
    script = _run("--show-completion", "bash")
    assert script.returncode == 0 and "complete" in script.stdout
    # What bash's completion function asks: the words so far, the cursor's word.
    env = {**os.environ, "_NIXFARM_COMPLETE": "complete_bash", "COMP_WORDS": "nixfarm doc",
           "COMP_CWORD": "1"}
    done = subprocess.run([NIXFARM], capture_output=True, text=True, env=env, timeout=60)
    assert "doctor" in done.stdout.split()


@pytest.mark.parametrize("args", [
    ("jobs", "--status", "nonsense"),
    ("jobs", "--limit", "0"),
    ("jobs", "--limit", "lots"),
    ("cancel", "abc"),
    ("logs", "-f", "12x"),
    ("cancel", "99999999999999999999999"),
    ("push", "--cache", "c", "--compression", "gzip", "/nix/store/x"),
    ("release", "--repo", "/r", "--rev", "main", "--cache", "c", "--file", "-A x"),
    ("release", "--repo", "/r", "--rev", "main", "--cache", "c", "--argstr", "a b=1"),
    ("release", "--repo", "/r", "--rev", "main", "--cache", "c", "--argstr", "noequals"),
])
def test_bad_input_is_one_sentence_and_exit_2(args: tuple[str, ...]) -> None:
    done = _run(*args)  # refused before any server is asked: none is given
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert f"nixfarm {args[0]} --help" in lines[0]
    assert "Input should be" not in lines[0] and "Value error" not in lines[0]


def _commands() -> list[tuple[str, ...]]:
    from typer.main import get_command

    from nixfarm.cli.main import app

    found: list[tuple[str, ...]] = []

    def walk(command: Any, path: tuple[str, ...]) -> None:
        found.append(path)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, (*path, name))

    walk(get_command(app), ())
    return found


@pytest.mark.parametrize("path", _commands(), ids=lambda p: " ".join(p) or "nixfarm")
def test_help_speaks_of_values_not_python_types(
        path: tuple[str, ...], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from nixfarm.cli.main import main

    # In this process: a subprocess per command costs seconds of imports each.
    monkeypatch.setattr("sys.argv", ["nixfarm", *path, "--help"])
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert "Usage: nixfarm" in text
    for python in ("<str>", "<int>", "<float>", "<bool>", "<path>", "<list", "{"):
        assert python not in text, f"{python} in the help of {' '.join(path)}:\n{text}"


def test_help_shows_defaults() -> None:
    assert "[default: 20]" in _run("jobs", "--help").stdout
    push = _run("push", "--help").stdout
    assert "[default: zstd]" in push and "[default: 4]" in push
    assert "PATH..." in push and "SECONDS" in push
