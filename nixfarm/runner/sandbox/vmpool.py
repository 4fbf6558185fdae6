"""A warm pool of booted VMs, so that a job's first task line does not wait for a boot.

A VM boots in 2-4 s under TCG (docs/BENCHMARKS.md); a job given one already booted
starts in a fraction of a second. The pool keeps up to ``size`` VMs booted and unused
(and their guest RAM, counted as each one's ``memory_limit``, under ``memory``) and
hands one to the next job that asks for exactly what it was booted for:

    job boots ─► take(spec) ─► an idle VM of that spec?  yes: hand it over (warm)
                     │                 no: one booting for it?  yes: wait for it
                     │                                          no: boot one (cold)
                     └─► refill(spec) in the background: a VM to replace it

Rules, each one a property the tests check:

- **Used once.** A VM leaves the pool for one job and is destroyed with that job (its
  ``shutdown``); it is never returned. An idle VM has run nothing of any job: only its
  boot and a warm-up (``_warm_up``: a put and a run that removes what it put, so that
  a job's first commands find the guest's programs loaded).
- **Exactly the job's VM.** A VM matches a job only when their ``SandboxSpec`` are
  equal but for ``environment`` (applied to each command) and ``timeout`` (its
  deadline starts at hand-over): image, network on or off, RAM, CPUs, /tmp are what
  the job asked for, so there is in effect one pool per network setting and image.
  Nothing is attached or enabled after boot. A spec with a Nix client is never pooled
  (its proxy is the job's own).
- **Demand decides.** The pool boots for specs jobs asked for: a job that takes a VM,
  or boots one cold because none was ready, asks for one to replace it. When the pool
  is full, the idle VM of the spec asked for least recently makes room. The first job
  of an image after the runner starts boots cold.
- **In the background.** Refills are tasks of the pool: the job never waits for one
  (it waits only for a boot that was meant for it and started before it asked), and
  they boot at niceness ``NICE``, so they take CPU from no running job. A refill that
  fails is logged and not retried until the next job asks.
- **Reaped like any VM.** Pool VMs are the runner's VMs (``VmSandbox``): killed with a
  runner killed by SIGKILL (``--die-with-parent``), their state directories removed
  at the next start (``vm.reap``); ``close`` shuts them down when the runner stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nixfarm.runner.sandbox.base import (
    BUILD_HOME,
    BUILD_UID,
    Lifecycle,
    LineCallback,
    SandboxError,
    SandboxSpec,
)
from nixfarm.runner.sandbox.terminal import Terminal
from nixfarm.runner.sandbox.vm import VmSandbox
from nixfarm.runner.shielding import uncancelled

log = logging.getLogger("nixfarm.runner")
#: The niceness a pool's VMs boot at, so that a refill takes CPU from no running job;
#: a job's VM is put back to 0 when the job takes it (``VmSandbox.hand_over``).
NICE = 10
#: Guest RAM a VM is counted for when its spec sets no limit (``qemu.DEFAULT_MEMORY``).
UNLIMITED_MEMORY = 2 * 1024**3


def pool_key(spec: SandboxSpec) -> SandboxSpec | None:
    """``spec`` as a pool VM is booted for it (None: never pooled; see the module doc)."""
    if spec.nix_client is not None:
        return None
    return SandboxSpec(spec.image, network=spec.network, memory_limit=spec.memory_limit,
                       cpu_limit=spec.cpu_limit, process_limit=spec.process_limit,
                       tmp_size=spec.tmp_size, home_size=spec.home_size)  # fmt: skip


def _memory(spec: SandboxSpec) -> int:
    return spec.memory_limit or UNLIMITED_MEMORY


@dataclass(eq=False)
class _Warm:
    key: SandboxSpec
    vm: VmSandbox
    #: The boot; True once the VM is ready, False if it failed (it is then shut down).
    booting: asyncio.Task[bool]
    since: float = field(default_factory=time.monotonic)


class VmPool:
    """Booted, unused VMs for the next jobs; see the module docstring."""

    def __init__(self, new_vm: Callable[[SandboxSpec], VmSandbox], size: int,
                 memory: int | None = None) -> None:
        if size < 0:
            raise SandboxError(f"A VM pool holds 0 or more VMs, not {size}.")
        self.size = size
        #: Bytes of guest RAM the idle VMs may hold together (None: ``size`` VMs' worth).
        self.memory = memory
        self._new_vm = new_vm
        self._warm: list[_Warm] = []
        #: Specs jobs asked for, the most recent last.
        self._wanted: list[SandboxSpec] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def idle(self) -> int:
        """VMs booted or booting for no job yet."""
        return len(self._warm)

    @property
    def vms(self) -> list[VmSandbox]:
        """The idle VMs, booted or booting."""
        return [w.vm for w in self._warm]

    async def filled(self) -> None:
        """Wait until the boots under way have ended (booted or failed)."""
        booting = [w.booting for w in self._warm if not w.booting.done()]
        if booting:
            await asyncio.wait(booting)

    @property
    def held_memory(self) -> int:
        """Bytes of guest RAM the pool's VMs may use (each counted at its limit)."""
        return sum(_memory(w.key) for w in self._warm)

    def new_sandbox(self, spec: SandboxSpec) -> PooledVm:
        """The runner's sandbox factory: a VM from the pool, or a new one."""
        return PooledVm(spec, self)

    def new_vm(self, spec: SandboxSpec) -> VmSandbox:
        """A VM not booted yet, as the runner makes them."""
        return self._new_vm(spec)

    async def take(self, spec: SandboxSpec) -> tuple[VmSandbox, float] | None:
        """A booted VM for ``spec`` and the seconds it waited in the pool, or None: boot
        one, then call ``refill``. A VM taken is replaced at once, in the background."""
        key = pool_key(spec)
        if key is None or self.size == 0 or self._closed:
            return None
        self._note(key)
        while True:
            warm = self._pick(key)
            if warm is None:
                return None
            self._warm.remove(warm)
            try:
                booted = await asyncio.shield(warm.booting)
            except asyncio.CancelledError:
                await uncancelled(self._discard(warm))
                raise
            if booted and warm.vm.usable():
                warm.vm.hand_over(spec)
                self.refill(spec)
                return warm.vm, time.monotonic() - warm.since
            await self._discard(warm)  # it died idle: the next one, or a cold boot

    def _pick(self, key: SandboxSpec) -> _Warm | None:
        """The VM of ``key`` that is ready first: a booted one, else the oldest boot."""
        mine = [w for w in self._warm if w.key == key]
        booted = [w for w in mine if w.booting.done()]
        first = booted or mine
        return first[0] if first else None

    def _note(self, key: SandboxSpec) -> None:
        if key in self._wanted:
            self._wanted.remove(key)
        self._wanted.append(key)
        del self._wanted[: -max(self.size, 1) * 4]  # (what no VM is kept for is forgotten)

    def refill(self, spec: SandboxSpec) -> None:
        """Start booting a VM for ``spec`` if there is room (making room from the spec
        asked for least recently); return at once."""
        key = pool_key(spec)
        if self._closed or self.size == 0 or key is None:
            return
        budget = self.memory if self.memory is not None else self.size * _memory(key)
        if _memory(key) > budget:
            return
        while len(self._warm) >= self.size or self.held_memory + _memory(key) > budget:
            victim = self._victim(key)
            if victim is None:
                log.info("VM pool full (%d VMs, %d MiB): none booted for this image",
                         len(self._warm), self.held_memory // 1024**2)
                return
            self._warm.remove(victim)
            self._background(self._discard(victim))
        vm = self._new_vm(key)
        vm.nice = NICE
        warm = _Warm(key, vm, asyncio.ensure_future(self._boot(vm)))
        self._warm.append(warm)
        log.info("VM pool: booting a VM for the next job (%d idle, %d MiB)", len(self._warm),
                 self.held_memory // 1024**2)

    def _victim(self, key: SandboxSpec) -> _Warm | None:
        """The idle VM to drop for one of ``key``: of another spec, the least recently
        asked for (a spec no longer asked for at all first)."""
        others = [w for w in self._warm if w.key != key]
        if not others:
            return None

        def recency(w: _Warm) -> int:
            return max((n for n, k in enumerate(self._wanted) if k == w.key), default=-1)

        return min(others, key=recency)

    async def _boot(self, vm: VmSandbox) -> bool:
        started = time.monotonic()
        try:
            await vm.boot()
            await _warm_up(vm)
        except SandboxError as e:  # (boot has shut it down)
            log.warning("VM pool: a VM failed to boot: %s", e.message)
            await vm.shutdown()
            return False
        log.info("VM pool: a VM booted in %.1f s; %d idle", time.monotonic() - started,
                 len(self._warm))
        return True

    async def _discard(self, warm: _Warm) -> None:
        warm.booting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await warm.booting
        await warm.vm.shutdown()

    def _background(self, work: Coroutine[object, object, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Shut every idle VM down; nothing more is booted. Idempotent."""
        self._closed = True
        warm, self._warm = self._warm, []
        await uncancelled(asyncio.gather(*(self._discard(w) for w in warm), *self._tasks,
                                         return_exceptions=True))


async def _warm_up(vm: VmSandbox) -> None:
    """A put and a run, as a job's first steps do, leaving nothing behind: the programs
    they start (su, the shells, env, cat...) are then in the guest's page cache and
    translated by TCG already, and the job's first commands do not pay for it."""
    scratch = "/tmp/.nixfarm-warm-up"
    await vm.put(scratch, b"")
    lines: list[str] = []
    status = await vm.run(["/bin/sh", "-c", 'rm -f "$0"', scratch], lines.append)
    if status != 0:
        raise SandboxError(f"The warm-up run failed ({status}): {' '.join(lines)[:200]}")


class PooledVm(Lifecycle):
    """A job's VM: taken from the pool at ``boot`` when one is ready, else booted now.

    Every verb goes to that VM; ``shutdown`` destroys it (a VM serves one job)."""

    def __init__(self, spec: SandboxSpec, pool: VmPool) -> None:
        self._spec = spec
        self._pool = pool
        self._vm: VmSandbox | None = None
        self._closed = False
        #: Seconds the VM had waited in the pool (None: booted for this job).
        self.waited: float | None = None

    @property
    def spec(self) -> SandboxSpec:
        return self._spec

    @property
    def vm(self) -> VmSandbox:
        if self._vm is None or self._closed:
            raise SandboxError("The sandbox is not running.")
        return self._vm

    @property
    def description(self) -> str:
        """As ``VmSandbox.description``, saying whether the VM came from the pool."""
        if self._vm is None:
            return "a VM (not booted)"
        if self.waited is None:
            return self._vm.description
        return f"{self._vm.description}, taken warm from the pool ({self.waited:.1f} s there)"

    async def boot(self) -> None:
        if self._vm is not None:
            return
        if self._closed:
            raise SandboxError("This sandbox has been shut down.")
        taken = await self._pool.take(self._spec)
        if taken is not None:
            self._vm, self.waited = taken
            return
        self._vm = self._pool.new_vm(self._spec)
        await self._vm.boot()
        # Booted cold (the first job of its kind, or the pool was behind): a VM for the
        # next such job boots now, not while this one did (it would have slowed it).
        self._pool.refill(self._spec)

    async def run(self, argv: Sequence[str], on_line: LineCallback, *,
                  env: Mapping[str, str] | None = None, cwd: str = BUILD_HOME,
                  stdin: bytes | Path | None = None,
                  timeout: float | None = None) -> int:  # noqa: ASYNC109
        return await self.vm.run(argv, on_line, env=env, cwd=cwd, stdin=stdin, timeout=timeout)

    async def put(self, path: str, data: bytes, *, mode: int = 0o644,
                  owner: int = BUILD_UID) -> None:
        await self.vm.put(path, data, mode=mode, owner=owner)

    async def get(self, path: str, dest: Path, *, limit: int | None = None) -> int:
        return await self.vm.get(path, dest, limit=limit)

    async def diagnose(self) -> list[str]:
        return await self.vm.diagnose()

    async def shell(self, argv: Sequence[str] | None, rows: int = 24, cols: int = 80,
                    env: Mapping[str, str] | None = None) -> Terminal:
        return await self.vm.shell(argv, rows, cols, env)

    async def ssh(self, public_key: str) -> tuple[Terminal, str]:
        return await self.vm.ssh(public_key)

    async def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._vm is not None:
            await self._vm.shutdown()
