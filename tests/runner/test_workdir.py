"""Where a runner works when its data dir is out of the sandboxes' reach."""

from __future__ import annotations

from pathlib import Path

import pytest

from nixfarm.runner.sandbox.processes import remove_tree
from nixfarm.runner.workdir import runner_dir, shadows_of


def test_a_shadow_directory_names_the_directory_it_stands_for(tmp_path: Path) -> None:
    hidden = tmp_path / "private"
    hidden.mkdir(mode=0o700)
    hidden.chmod(0o700)  # the umask may have left it reachable
    wanted = hidden / "data" / "runner"
    home = runner_dir(wanted)
    try:
        assert home != wanted and not wanted.exists()
        assert (home / "origin").read_text().strip() == str(wanted.resolve())
        assert runner_dir(wanted) == home  # the same place on every start
        assert shadows_of(hidden) == [home]
        assert shadows_of(tmp_path) == [home]
        assert shadows_of(tmp_path / "elsewhere") == []
    finally:
        remove_tree(home)


def test_a_reachable_directory_is_used_as_it_is(tmp_path: Path) -> None:
    reachable = tmp_path / "open"
    reachable.mkdir()
    for directory in [reachable, *reachable.parents]:
        if not directory.stat().st_mode & 0o001:
            pytest.skip(f"{directory} is private: the other test covers this case")
    assert runner_dir(reachable / "runner") == reachable / "runner"
