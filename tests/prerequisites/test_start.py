"""``nixfarm up``, ``server`` and ``runner`` refuse to start without what they need,
with one sentence and exit 2, before writing or announcing anything; ``doctor`` lists
every check."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.farm import NIXFARM, RunningFarm, free_port


def _nixfarm(*args: str, env: dict[str, str] | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([NIXFARM, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def no_build_group(tmp_path: Path) -> dict[str, str]:
    conf = tmp_path / "nixconf"
    conf.mkdir()
    (conf / "nix.conf").write_text("build-users-group = nixfarm-no-such-group\nsandbox = true\n")
    return {"NIX_CONF_DIR": str(conf)}


def _one_sentence(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_up_without_the_nix_build_group_refuses_to_start(
        tmp_path: Path, no_build_group: dict[str, str]) -> None:
    data = tmp_path / "data"
    done = _nixfarm("up", "--demo", "--data-dir", str(data),
                    "--listen", f"127.0.0.1:{free_port()}", env=no_build_group)
    _one_sentence(done, "nixfarm up cannot start", "nixfarm-no-such-group",
                  "scripts/setup-nix")
    assert not (data / "server.json").exists() and not (data / "admin.token").exists()


def test_up_with_nginx_asked_for_but_missing_refuses_to_start(tmp_path: Path) -> None:
    done = _nixfarm("up", "--data-dir", str(tmp_path / "data"),
                    "--listen", f"127.0.0.1:{free_port()}",
                    env={"NIXFARM_EDGE__SERVER": "nginx", "NIXFARM_EDGE__NGINX": "nginx-gone"})
    _one_sentence(done, "'nginx-gone' is not installed", "apt-get install nginx")


def test_server_with_an_unreachable_database_refuses_to_start(tmp_path: Path) -> None:
    url = f"postgresql://nixfarm@127.0.0.1:{free_port()}/nixfarm"
    done = _nixfarm("server", "--data-dir", str(tmp_path / "data"),
                    "--listen", f"127.0.0.1:{free_port()}",
                    env={"NIXFARM_DATABASE_URL": url})
    _one_sentence(done, "nixfarm server cannot start", "cannot connect to the database",
                  "database_url")


def test_runner_without_the_nix_build_group_refuses_to_start(
        tmp_path: Path, no_build_group: dict[str, str]) -> None:
    done = _nixfarm("runner", "--url", f"http://127.0.0.1:{free_port()}",
                    "--work-dir", str(tmp_path / "work"),
                    env={**no_build_group, "NIXFARM_RUNNER_TOKEN": "t"})
    _one_sentence(done, "nixfarm runner cannot start", "nixfarm-no-such-group")


def test_doctor_prints_every_check_and_fails_on_a_missing_piece(
        tmp_path: Path, no_build_group: dict[str, str]) -> None:
    data = ["--data-dir", str(tmp_path / "data")]
    healthy = _nixfarm("doctor", *data)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    names = [line.split()[1] for line in healthy.stdout.splitlines() if line.startswith("ok")]
    assert {"data", "database", "redis", "storage", "nginx", "nix", "bubblewrap"} <= set(names)
    broken = _nixfarm("doctor", *data, env=no_build_group)
    assert broken.returncode == 1
    failed = [line for line in broken.stdout.splitlines() if line.startswith("FAIL")]
    assert len(failed) == 1 and "nixfarm-no-such-group" in failed[0], broken.stdout
    assert "fix: scripts/setup-nix" in broken.stdout


def test_a_second_farm_on_the_same_data_dir_is_refused_and_the_first_keeps_serving(
        tmp_path: Path) -> None:
    first = RunningFarm(tmp_path / "data", free_port())
    first.start()
    try:
        assert first.process is not None
        done = _nixfarm("up", "--data-dir", str(first.data_dir),
                        "--listen", f"127.0.0.1:{free_port()}")
        assert done.returncode == 1, done.stderr
        assert done.stderr.strip() == (f"error: another farm (pid {first.process.pid}) uses "
                                       f"{first.data_dir}; stop it first, or start this one "
                                       "with another --data-dir")
        assert first.get("/healthz").status_code == 200
        assert (first.data_dir / "server.json").exists()
    finally:
        first.stop()
    # The lock goes with the farm: the same directory starts again at once.
    again = RunningFarm(first.data_dir, free_port())
    again.start()
    again.stop()


@pytest.mark.parametrize("edge", ["nginx", "none"])
def test_an_address_in_use_is_refused_before_announcing(tmp_path: Path, edge: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        data = tmp_path / "data"
        done = _nixfarm("up", "--data-dir", str(data), "--listen", f"127.0.0.1:{port}",
                        env={"NIXFARM_EDGE__SERVER": edge})
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip() == (f"error: 127.0.0.1:{port} is in use by another program; "
                                   "stop it or choose another address with --listen")
    assert not (data / "server.json").exists()


def test_a_read_only_data_dir_is_one_sentence(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    # Root ignores file modes: make the directory really read-only, in a mount
    # namespace of the command's own.
    script = (f"mount --bind -o ro {data} {data} && exec {NIXFARM} up --data-dir {data} "
              f"--listen 127.0.0.1:{free_port()}")
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=120)
    _one_sentence(done, f"cannot write to the data directory {data}", "Read-only file system",
                  "--data-dir")


@pytest.mark.postgres
def test_a_missing_postgresql_role_is_one_sentence(tmp_path: Path, postgres_url: str) -> None:
    from sqlalchemy.engine import make_url

    url = make_url(postgres_url).set(username="nixfarm_nobody", password=None)
    done = _nixfarm("server", "--data-dir", str(tmp_path / "data"),
                    "--listen", f"127.0.0.1:{free_port()}",
                    env={"NIXFARM_DATABASE_URL": url.render_as_string(hide_password=False)})
    _one_sentence(done, "nixfarm server cannot start", 'role "nixfarm_nobody" does not exist',
                  "database_url")
