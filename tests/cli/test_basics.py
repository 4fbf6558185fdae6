"""What every daily tool has: a version, shell completion."""

from __future__ import annotations

import os
import subprocess
from importlib.metadata import version

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
