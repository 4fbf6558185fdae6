"""How ``nixfarm ssh`` splits its arguments into ssh's options and the remote command,
as ssh itself reads them (``ssh(1)``'s option letters that take a value); where
``--config`` keeps its files."""

from __future__ import annotations

from pathlib import Path

import pytest

from nixfarm.cli.ssh import _state_dir, split_ssh_args


@pytest.mark.parametrize(("args", "options", "command"), [
    ([], [], []),
    (["cat", "f"], [], ["cat", "f"]),
    (["cat", "-n", "f"], [], ["cat", "-n", "f"]),  # options of the command stay its own
    (["-L", "8080:localhost:80", "-v", "ls"], ["-L", "8080:localhost:80", "-v"], ["ls"]),
    (["-vL", "1:x:2", "ls"], ["-vL", "1:x:2"], ["ls"]),  # a cluster ending with L
    (["-oUser=x", "-p22", "ls"], ["-oUser=x", "-p22"], ["ls"]),  # values attached
    (["-tt"], ["-tt"], []),
])
def test_ssh_options_then_the_command(args: list[str], options: list[str],
                                      command: list[str]) -> None:
    assert split_ssh_args(args) == (options, command)


def test_config_files_are_kept_per_farm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    # Two farms each have a job 1: their keys and pinned host keys must not mix.
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    one = _state_dir("http://127.0.0.1:8080", 1)
    other = _state_dir("https://farm.example:8443/", 1)
    assert one != other and one.is_dir() and other.is_dir()
    assert one == tmp_path / "nixfarm" / "ssh" / "127.0.0.1-8080" / "job-1"
    assert oct(one.stat().st_mode & 0o777) == "0o700"
    assert _state_dir("http://127.0.0.1:8080", 2).parent == one.parent
