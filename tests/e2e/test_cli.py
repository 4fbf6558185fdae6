"""The `nixfarm` command as a user runs it: `up`, the cache and token commands, exit codes."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
from pathlib import Path

from tests.fixtures.farm import NIXFARM, RunningFarm, free_port
from tests.fixtures.nixenv import Nix


def _nixfarm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NIXFARM_")}
    return subprocess.run([NIXFARM, *args], capture_output=True, text=True, timeout=120,
                          env={**clean, **(env or {})})


def test_up_demo_writes_a_private_token_and_stops_gracefully(tmp_path: Path) -> None:
    farm = RunningFarm(tmp_path / "data", free_port())
    farm.start("--demo")
    try:
        mode = stat.S_IMODE((farm.data_dir / "admin.token").stat().st_mode)
        assert mode == 0o600
        env = {"NIXFARM_DATA_DIR": str(farm.data_dir)}
        listed = _nixfarm("cache", "list", env=env)
        assert listed.returncode == 0 and "demo" in listed.stdout
        key = _nixfarm("cache", "key", "demo", env=env)
        assert key.returncode == 0
        assert key.stdout.count("\n") == 1 and key.stdout.strip().endswith("=")
        assert key.stdout.split(":")[0].endswith("-demo-1")
        info = _nixfarm("cache", "info", "demo", env=env)
        assert f"{farm.url}/cache/demo" in info.stdout and "public" in info.stdout
        # The embedded runner waits for the farm's port: no failed call at each start.
        deadline = time.monotonic() + 60
        while "runner embedded registered" not in farm.log.read_text():
            assert time.monotonic() < deadline, farm.log.read_text()
            time.sleep(0.2)
        assert "failed (attempt" not in farm.log.read_text(), farm.log.read_text()
    finally:
        assert farm.process is not None
        os.killpg(farm.process.pid, signal.SIGTERM)
        assert farm.process.wait(20) == 0
    assert not (farm.data_dir / "server.json").exists()
    stopped = _nixfarm("cache", "list", "--data-dir", str(farm.data_dir))
    assert stopped.returncode == 2 and "no running farm" in stopped.stderr

    # Started again on the same data dir: same token, same caches, same keys.
    token = farm.token
    farm.start("--demo")
    try:
        assert farm.token == token
        again = _nixfarm("cache", "key", "demo", env={"NIXFARM_DATA_DIR": str(farm.data_dir)})
        assert again.stdout == key.stdout
    finally:
        farm.stop()


def test_exit_codes_and_error_messages(farm: RunningFarm, nix: Nix, tmp_path: Path) -> None:
    env = {"NIXFARM_URL": farm.url, "NIXFARM_TOKEN": farm.token}
    no_server = _nixfarm("cache", "list")
    assert no_server.returncode == 2 and "no server given" in no_server.stderr
    unknown = _nixfarm("cache", "info", "nope", env=env)
    assert unknown.returncode == 2 and "no cache named 'nope'" in unknown.stderr
    bad_name = _nixfarm("cache", "create", "Bad Name!", env=env)
    assert bad_name.returncode == 2 and "Cache name" in bad_name.stderr
    name, _ = farm.create_cache()
    dup = _nixfarm("cache", "create", name, env=env)
    assert dup.returncode == 1 and "already exists" in dup.stderr
    bad_scope = _nixfarm("token", "create", "--scope", "root", env=env)
    assert bad_scope.returncode == 2 and "root" in bad_scope.stderr
    usage = _nixfarm("push", env=env)
    assert usage.returncode == 2

    not_store = tmp_path / "file"
    not_store.write_text("x")
    push = _nixfarm("push", "--cache", name, str(not_store), env=env)
    assert push.returncode == 2 and "not a Nix store path" in push.stderr
    hello = nix.build("hello")
    wrong = _nixfarm("push", "--cache", name, hello,
                     env={**env, "NIXFARM_TOKEN": "nf_not-a-token"})
    assert wrong.returncode == 1 and "unknown, revoked or expired" in wrong.stderr
    reader = farm.cli("token", "create", "--scope", f"cache:{name}:pull").stdout.strip()
    refused = _nixfarm("push", "--cache", name, hello, env={**env, "NIXFARM_TOKEN": reader})
    assert refused.returncode == 1 and f"cache:{name}:push" in refused.stderr
    ok = _nixfarm("push", "--cache", name, hello, env=env)
    assert ok.returncode == 0 and hello in ok.stdout.split()
    for out in (no_server, unknown, push, wrong):
        assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1
