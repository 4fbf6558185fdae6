"""A job's Nix socket against a client that writes the worker protocol by hand.

The runner's real nix-daemon (``NixDaemon``, as root) behind a real ``NixProxy``; the
attacker is ``workerclient``: what a job could send with a few lines of any language.
"""

from __future__ import annotations

import asyncio
import glob
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from nixfarm.runner import nixproxy
from nixfarm.runner.nixd import NixDaemon
from nixfarm.runner.nixproxy import MAX_CONNECTIONS, NixProxy, StoreView
from tests.security.workerclient import Client, DaemonError, derivation

T = TypeVar("T")


class Rig:
    """The runner's daemon and one job's proxy, on an event loop of their own."""

    def __init__(self, where: Path) -> None:
        self.where = where
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.daemon = NixDaemon(where / "state", {"substituters": ""})
        self.proxies: list[NixProxy] = []

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(300)

    def proxy(self, view: set[str]) -> NixProxy:
        async def start() -> NixProxy:
            await self.daemon.start()
            assert self.daemon.offline_socket is not None
            proxy = NixProxy(self.where / f"job-{len(self.proxies)}.sock",
                             self.daemon.offline_socket, StoreView(view), job="attacker")
            await proxy.start()
            return proxy
        proxy = self.run(start())
        self.proxies.append(proxy)
        return proxy

    def close(self) -> None:
        for proxy in self.proxies:
            self.run(proxy.stop())
        self.run(self.daemon.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def rig() -> Iterator[Rig]:
    where = Path(tempfile.mkdtemp(prefix="nixfarm-sec-proxy-"))
    running = Rig(where)
    yield running
    running.close()
    shutil.rmtree(where, ignore_errors=True)


def host_add(path: Path) -> str:
    """``nix-store --add`` on the host: a path some other tenant (or the host) has."""
    done = subprocess.run(["nix-store", "--add", str(path)], capture_output=True, text=True,
                          check=True)
    return done.stdout.strip()


@pytest.fixture
def busybox(tmp_path: Path) -> str:
    """A store path with a static busybox as ``bin/busybox`` (the job's image)."""
    root = tmp_path / "busybox"
    (root / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    return host_add(root)


@pytest.fixture
def victim(tmp_path: Path) -> tuple[str, str]:
    """Another tenant's secret in the host's store: (its path, the secret)."""
    secret = f"other-tenant-secret-{uuid.uuid4().hex}"
    source = tmp_path / "secret.txt"
    source.write_text(secret)
    return host_add(source), secret


def test_a_derivations_inputs_must_be_in_the_jobs_view(
        rig: Rig, busybox: str, victim: tuple[str, str]) -> None:
    victim_path, secret = victim
    proxy = rig.proxy({busybox})
    shell = f"{busybox}/bin/busybox"
    marker = uuid.uuid4().hex[:12]

    # The control: the same shape of derivation with inputs of its own builds, and its
    # output is the job's to read (so the paths below are computed right).
    text, drv, out = derivation(f"own-{marker}", shell,
                                ["sh", "-c", f"echo own-{marker} > $out"], [busybox],
                                references=(busybox,))
    client = Client(proxy.path)
    assert client.add_text(f"own-{marker}.drv", text, [busybox]) == drv
    client.build([f"{drv}!out"])
    assert f"own-{marker}".encode() in client.nar(out)
    client.close()

    # The attack: a derivation whose inputSrcs name the other tenant's path, added as
    # text with no references declared (so the references check has nothing to see).
    text, drv, out = derivation(f"steal-{marker}", shell,
                                ["sh", "-c", f"{shell} cat {victim_path} > $out"],
                                [busybox, victim_path])
    client = Client(proxy.path)
    with pytest.raises(DaemonError) as refused:
        client.add_text(f"steal-{marker}.drv", text, [])
        client.build([f"{drv}!out"])
        got = client.nar(out)
        assert secret.encode() not in got, "the job read another tenant's path"
    assert f"{victim_path} is not a store path of this job" in str(refused.value)
    client.close()
    # Nothing of it reached the job through a second connection either.
    client = Client(proxy.path)
    assert not client.is_valid(out)
    client.close()


def test_a_derivation_built_by_the_job_is_checked_before_it_is_built(
        rig: Rig, busybox: str, victim: tuple[str, str]) -> None:
    victim_path, secret = victim
    proxy = rig.proxy({busybox})
    shell = f"{busybox}/bin/busybox"
    marker = uuid.uuid4().hex[:12]
    # The stealing derivation is never added: a first build writes it as its output
    # (named "….drv", which the daemon takes for a derivation), and the job then asks
    # for that output's output.
    inner, _, inner_out = derivation(f"inner-{marker}", shell,
                                     ["sh", "-c", f"{shell} cat {victim_path} > $out"],
                                     [busybox, victim_path])
    outer, outer_drv, written = derivation(
        f"inner-{marker}.drv", shell, ["sh", "-c", 'printf "%s" "$1" > $out', "sh", inner],
        [busybox], references=(busybox,))
    client = Client(proxy.path)
    assert client.add_text(f"inner-{marker}.drv.drv", outer, [busybox]) == outer_drv
    client.build([f"{outer_drv}!out"])
    assert Path(written).read_text() == inner  # a derivation the daemon would build
    with pytest.raises(DaemonError) as refused:
        client.build([f"{written}!out"])
        got = client.nar(inner_out)
        assert secret.encode() not in got, "the job read another tenant's path"
    assert f"{victim_path} is not a store path of this job" in str(refused.value)
    assert not Path(inner_out).exists()  # it never ran with the path in its sandbox
    client.close()


def test_a_job_has_a_few_daemon_connections_not_thousands(rig: Rig, busybox: str) -> None:
    proxy = rig.proxy({busybox})
    clients = [Client(proxy.path) for _ in range(MAX_CONNECTIONS)]
    with pytest.raises(DaemonError) as refused:
        Client(proxy.path)
    assert f"at most {MAX_CONNECTIONS} connections" in str(refused.value)
    assert all(c.is_valid(busybox) for c in clients)  # those served still are
    clients.pop().close()
    deadline = time.monotonic() + 30
    while True:  # the proxy sees the hang-up as it reads the next request
        try:
            clients.append(Client(proxy.path))
            break
        except DaemonError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    for client in clients:
        client.close()


def test_a_job_cannot_keep_failed_builds_on_the_host(rig: Rig, busybox: str) -> None:
    proxy = rig.proxy({busybox})
    marker = uuid.uuid4().hex[:12]
    shell = f"{busybox}/bin/busybox"
    text, drv, _ = derivation(f"fail-{marker}", shell,
                              ["sh", "-c", f"{shell} dd if=/dev/zero of=junk bs=1k count=64;"
                               " exit 1"], [busybox], references=(busybox,))
    client = Client(proxy.path)
    client.set_options(keep_failed=True, max_jobs=100_000, cores=100_000,
                       overrides={"build-repeat": "5", "keep-failed": "true"})
    client.add_text(f"fail-{marker}.drv", text, [busybox])
    with pytest.raises(DaemonError) as failed:
        client.build([f"{drv}!out"])
    assert "failed" in str(failed.value)
    said = "\n".join(failed.value.said)
    assert "keeping build directory" not in said, said
    assert not glob.glob(f"/tmp/nix-build-fail-{marker}.drv-*"), "kept on the host"
    client.close()


def test_asking_about_outputs_again_and_again_checks_the_store_once_a_second(
        rig: Rig, busybox: str, monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = rig.proxy({busybox})
    marker = uuid.uuid4().hex[:12]
    # A derivation whose output is not its own: the daemon refuses it, and its output
    # stays pending in the view: every question about it made the proxy run nix-store.
    _, _, other = derivation(f"other-{marker}", "/bin/sh", [], [])
    text, _, out = derivation(f"forged-{marker}", "/bin/sh", [], [])
    text = text.replace(out, other)
    client = Client(proxy.path)
    with pytest.raises(DaemonError):
        client.add_text(f"forged-{marker}.drv", text, [])
    client.close()
    calls: list[int] = []
    real = nixproxy.invalid_paths

    async def counted(paths: list[str]) -> set[str]:
        calls.append(len(paths))
        return await real(paths)

    monkeypatch.setattr(nixproxy, "invalid_paths", counted)
    client = Client(proxy.path)
    started = time.monotonic()
    assert client.valid_paths([other] * 500 + [busybox]) == [busybox]
    for _ in range(200):
        assert not client.is_valid(other)
    elapsed = time.monotonic() - started
    assert 1 <= len(calls) <= elapsed + 2, (len(calls), elapsed)
    client.close()
