"""The local provider's own promises (nixfarm/builders/local.py), with real qemu: the
user data stays out of qemu's command line, destroy ends the process and removes its
files, a malformed plan is a clear error. (The four verbs: test_conformance.py; a whole
netboot: test_local_netboot.py.)"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nixfarm.builders.base import InstanceSpec, tags_of, user_data
from nixfarm.builders.local import LocalProvider, guest_url, parse_plan
from nixfarm.errors import ProviderError

pytestmark = pytest.mark.anyio


def _proc(pid: int, name: str) -> bytes | None:
    """/proc/PID/NAME, None once the process is gone."""
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:
        return None


def test_plans_and_urls() -> None:
    assert parse_plan("") == (2, 2048, 8)
    assert parse_plan("4c-8192m-40g") == (4, 8192, 40)
    with pytest.raises(ProviderError, match="is not <vcpus>c-<MiB>m-<GiB>g"):
        parse_plan("vc2-1c-1gb")
    assert guest_url("http://127.0.0.1:8080/builders/1/boot.ipxe") == \
        "http://10.0.2.2:8080/builders/1/boot.ipxe"
    assert guest_url("https://farm.example.org/x") == "https://farm.example.org/x"


async def test_destroy_ends_the_vm_and_removes_its_files(tmp_path: Path) -> None:
    provider = LocalProvider(tmp_path)
    secret = "nfe_never-on-a-command-line"
    made = await provider.create(InstanceSpec(
        name="t-1", region="", plan="1c-256m-1g", image="",
        boot_url="http://127.0.0.1:1/builders/1/boot.ipxe",
        user_data=user_data("http://127.0.0.1:1", secret), tags=tags_of("t", "p", 1)))
    where = tmp_path / made.id
    pid = int(json.loads((where / "meta.json").read_text())["pid"])
    cmdline = _proc(pid, "cmdline")
    assert cmdline is not None
    assert b"qemu-system-x86_64" in cmdline and b"10.0.2.2:1/builders/1/boot.ipxe" in cmdline
    assert secret.encode() not in cmdline
    assert secret in (where / "user-data.json").read_text()
    assert os.stat(where / "user-data.json").st_mode & 0o077 == 0
    await provider.destroy(made.id)
    assert not where.exists() and await provider.get(made.id) is None
    status = _proc(pid, "stat")  # gone, or a zombie the provider's thread is reaping
    assert status is None or status.rsplit(b")", 1)[1].split()[0] == b"Z"
