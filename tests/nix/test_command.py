"""The asynchronous nix runner, against real builds that fail, hang and chat."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from nixfarm.errors import NixError, NixTimeout, NotFound
from nixfarm.nix import command
from nixfarm.nix.hashes import normalise_hash
from tests.nix.conftest import NIX_COMMAND, Probe, nix

pytestmark = pytest.mark.anyio


def processes_mentioning(marker: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline + environ:
            found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


async def test_returns_stdout() -> None:
    assert await command.run(["nix-instantiate", "--eval", "-E", "1 + 2"]) == "3\n"


async def test_passes_stdin_and_env() -> None:
    assert await command.run(["nix-instantiate", "--eval", "-"], stdin=b"6 * 7") == "42\n"
    output = await command.run(
        ["nix-instantiate", "--eval", "-E", 'builtins.getEnv "NIXFARM_PROBE"'],
        env={"NIXFARM_PROBE": "hello"},
    )
    assert output == '"hello"\n'


async def test_failing_derivation_is_named(probe: Probe, nonce: str) -> None:
    lines: list[str] = []
    with pytest.raises(NixError) as caught:
        await command.run(probe.build_args("broken", nonce), on_line=lines.append)
    error = caught.value
    assert error.drv.startswith("/nix/store/") and error.drv.endswith("-probe-broken.drv")
    assert error.drv in error.message
    assert "exit code 3" in error.message
    assert error.message.startswith("nix-build failed: builder for ")
    assert any("failing now" in line for line in error.log_tail)
    assert error.log_tail == lines[-len(error.log_tail) :]


async def test_evaluation_errors_have_no_drv() -> None:
    with pytest.raises(NixError) as caught:
        await command.run(["nix-instantiate", "--eval", "-E", 'throw "kaboom"'])
    assert caught.value.drv == ""
    assert "kaboom" in caught.value.message


async def test_missing_program() -> None:
    with pytest.raises(NixError, match="Cannot run no-such-nix-program"):
        await command.run(["no-such-nix-program"])


async def test_timeout_stops_nix_and_its_builder(probe: Probe, nonce: str) -> None:
    started = time.monotonic()
    lines: list[str] = []
    with pytest.raises(NixTimeout) as caught:
        await command.run(probe.build_args("slow", nonce), timeout=2, on_line=lines.append)
    elapsed = time.monotonic() - started
    error = caught.value
    assert error.seconds == 2
    assert error.drv.endswith("-probe-slow.drv")
    assert "within 2 seconds" in error.message and error.drv in error.message
    assert "slow started" in lines
    assert elapsed < 2 + command.TERMINATE_GRACE
    # The builder runs in a session of its own; it must not survive nix.
    assert processes_mentioning(nonce) == []


async def test_lines_arrive_while_nix_runs(probe: Probe, nonce: str) -> None:
    arrivals: dict[str, float] = {}

    def on_line(line: str) -> None:
        arrivals.setdefault(line, time.monotonic())

    output = await command.run(probe.build_args("chatty", nonce), on_line=on_line)
    finished = time.monotonic()
    assert output.strip().endswith("-probe-chatty")
    # The builder sleeps 2 s between its two lines.
    assert finished - arrivals["line-one"] > 1.5
    assert arrivals["line-two"] - arrivals["line-one"] > 1.5


async def test_query_closure(probe: Probe, probe_top: str) -> None:
    closure = await command.query_closure([probe_top])
    assert sorted(closure) == sorted(nix("nix-store", "-qR", probe_top).split())
    assert probe_top in closure
    assert {p.split("-", 1)[1] for p in closure} == {"probe-top", "probe-dep", "busybox"}
    assert await command.query_closure([]) == []
    with pytest.raises(NixError, match="is not valid"):
        await command.query_closure(["/nix/store/00000000000000000000000000000000-nope"])


async def test_path_info(probe_top: str) -> None:
    closure = await command.query_closure([probe_top])
    infos = {info.path: info for info in await command.path_info(closure)}
    assert set(infos) == set(closure)
    for path, info in infos.items():
        assert info.nar_hash == normalise_hash(nix("nix-store", "-q", "--hash", path).strip())
        assert info.nar_size == int(nix("nix-store", "-q", "--size", path))
        assert sorted(info.references) == sorted(
            nix("nix-store", "-q", "--references", path).split()
        )
    top = infos[probe_top]
    assert top.deriver is not None and top.deriver.endswith("-probe-top.drv")
    assert top.ca is None
    assert len(top.references) == 2
    busybox = next(info for path, info in infos.items() if path.endswith("-busybox"))
    assert busybox.ca is not None and busybox.ca.startswith("fixed:r:sha256:")
    assert busybox.deriver is None


async def test_path_info_of_a_missing_path() -> None:
    missing = "/nix/store/00000000000000000000000000000000-nope"
    with pytest.raises(NotFound) as caught:
        await command.path_info([missing])
    assert caught.value.name == missing


async def test_other_stores(probe_top: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    nix("nix", *NIX_COMMAND, "copy", "--to", f"file://{cache}?compression=none", probe_top)
    (info,) = await command.path_info([probe_top], store=f"file://{cache}")
    (local,) = await command.path_info([probe_top])
    assert (info.nar_hash, info.nar_size, info.references) == (
        local.nar_hash,
        local.nar_size,
        local.references,
    )
    closure = await command.query_closure([probe_top], store=f"file://{cache}")
    assert sorted(closure) == sorted(await command.query_closure([probe_top]))


async def test_cancelling_the_caller_stops_the_build(probe: Probe, nonce: str) -> None:
    started = asyncio.Event()

    def on_line(line: str) -> None:
        if line == "slow started":
            started.set()

    task = asyncio.create_task(command.run(probe.build_args("slow", nonce), on_line=on_line))
    await asyncio.wait_for(started.wait(), 10)
    assert len(processes_mentioning(nonce)) >= 2  # nix and its builder
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert processes_mentioning(nonce) == []
