"""How ``nixfarm ssh`` splits its arguments into ssh's options and the remote command,
as ssh itself reads them (``ssh(1)``'s option letters that take a value)."""

from __future__ import annotations

import pytest

from nixfarm.cli.ssh import split_ssh_args


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
