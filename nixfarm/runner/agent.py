"""The runner agent: claims jobs from a server and runs them, one per slot.

    register ─► per slot: claim (long-poll) ─► run the job's steps in a sandbox
                                  ├─ heartbeat loop: renews the lease; "stop" cancels the job
                                  ├─ log shipper: lines to the server within ~0.1 s
                                  └─ reporter: task states and artifacts over HTTP
                          ─► finish (success / failed / timeout, and the failed step)

``image: nix`` jobs get Nix: the agent starts its ``NixDaemon`` (if it has one) on
the first such job and gives the sandbox its client; a job with a ``cache`` grant
gets a ``cache push`` step that pushes with the grant's token (``cachepush``).
Without a working daemon, Nix jobs run without Nix and cache jobs are refused at
boot, saying why.

Stopping (``stop``, on SIGTERM or SIGINT): the agent claims no more jobs, gives the
running ones ``grace`` seconds to end on their own, then kills them, writes
"interrupted" at the end of their logs and reports them ``interrupted`` (the server
queues a job again once). ``serve`` returns when every job is reported. Cancelling
``serve`` instead stops at once, reporting nothing: the server settles those jobs
when the runner registers again.

The agent knows the server only through its HTTP API (``protocol.py``) and a token
with the ``runner`` scope; the database and the event bus are out of its reach. A
job the server takes back (409: lease lost) is killed and reported no further.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, TypeVar

from nixfarm.errors import NixfarmError
from nixfarm.manifest import manifest_from_data
from nixfarm.retries import retried, runner_calls
from nixfarm.runner.cachepush import pusher
from nixfarm.runner.hold import hold
from nixfarm.runner.imageupdates import ImageUpdater
from nixfarm.runner.logship import LogShipper
from nixfarm.runner.nixd import NixDaemon
from nixfarm.runner.protocol import LeaseLost, RunnerClient
from nixfarm.runner.roots import Images
from nixfarm.runner.sandbox import BwrapSandbox, Sandbox, SandboxSpec
from nixfarm.runner.sandbox.base import NixClient
from nixfarm.runner.shielding import until_either
from nixfarm.runner.steps import JobContext, JobResult, Secret, StepStatus, TaskStatus, run_job
from nixfarm.runner.workdir import sweep
from nixfarm.wire.runners import Assignment, FinishRequest, RunnerRegister, TaskReport

log = logging.getLogger("nixfarm.runner")
T = TypeVar("T")

#: The last line of an interrupted job's log (of the task that was running).
INTERRUPTED_LINE = ("nixfarm: interrupted: the runner was stopped (shut down) while this "
                    "job ran")
#: The stop reason of a job its runner ended because the runner is stopping.
INTERRUPTED = "interrupted"


@dataclass
class _HttpReporter:
    client: RunnerClient
    job_id: int
    shipper: LogShipper
    #: The task running now (None: none), whose log an interruption is written to.
    current: str | None = None

    async def step(self, name: str, status: StepStatus) -> None:
        pass  # steps show in the setup log; the server tracks tasks and the job

    async def task(self, name: str, status: TaskStatus, exit_code: int | None = None) -> None:
        if status == "pending":
            return
        self.current = name if status == "running" else None
        # The task's log lines so far go before its state changes: a follower sees
        # the whole output of a task before it is marked done.
        await self.shipper.flush()
        await self.client.task(self.job_id, name, TaskReport(status=status, exit_code=exit_code))

    async def artifact(self, path: str, file: Path, size: int) -> None:
        await self.client.artifact(self.job_id, path, file)


@dataclass
class Agent:
    client: RunnerClient
    images: Images
    name: str = field(default_factory=socket.gethostname)
    slots: int = 1
    work_root: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "nixfarm-runner")
    new_sandbox: Callable[[SandboxSpec], Sandbox] = BwrapSandbox
    #: Every kind ``new_sandbox`` makes, preferred first (``choice.choose_kinds``),
    #: and a VM's accelerator.
    sandbox_kinds: Sequence[str] = ("bwrap",)
    accelerator: str = ""
    #: Seconds between looks at the catalogue: a new image is offered without a restart.
    image_poll: float = 5.0
    claim_wait: float = 20.0
    #: Nix for ``image: nix`` jobs; None: none (and no cache pushes).
    nix: NixDaemon | None = None
    #: Roots under which ``file://`` sources may be cloned from.
    local_sources: Sequence[Path] = ()
    #: Installs the builds of the farm's image schedules (``imageupdates``); None: the
    #: runner's operator installs images (``nixfarm image install``).
    image_updates: ImageUpdater | None = None
    _nix_lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False, repr=False)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)
    _offered: list[str] = field(default_factory=list, init=False, repr=False)
    _builds: dict[str, str] = field(default_factory=dict, init=False, repr=False)
    #: Per job running: its task, and the list its stop reason goes into.
    _running: dict[int, tuple[asyncio.Task[JobResult], list[str]]] = field(
        default_factory=dict, init=False, repr=False)
    #: Sandboxes kept for ``nixfarm shell`` after their job ended, by job: at most
    #: ``slots`` at once, and they take no slot (the runner goes on claiming).
    _holds: dict[int, asyncio.Task[None]] = field(default_factory=dict, init=False,
                                                  repr=False)

    def _image_builds(self) -> dict[str, str]:
        """Which build each installed disk image is (with image updates on)."""
        return self.image_updates.describe() if self.image_updates is not None else {}

    def offered(self) -> list[str]:
        """The images this runner can run in its sandboxes (a disk image needs vm)."""
        return sorted(self.images.names(self.sandbox_kinds))

    async def register(self, *, refresh: bool = False) -> None:
        """Tell the farm what this runner offers; ``refresh``: again, while it runs
        (its jobs go on)."""
        offered = await asyncio.to_thread(self.offered)
        builds = await asyncio.to_thread(self._image_builds)
        out = await self.client.register(RunnerRegister(
            name=self.name, arch=os.uname().machine, images=offered,
            sandboxes=list(self.sandbox_kinds), accelerator=self.accelerator, slots=self.slots,
            refresh=refresh, image_builds=builds))
        # Only once the farm knows: a failed call is tried again.
        self._offered, self._builds = offered, builds
        log.info("runner %s %s as %d with %d slot(s): %s", self.name,
                 "offers anew" if refresh else "registered", out.id, self.slots,
                 ", ".join(self._offered))

    async def _watch_images(self) -> None:
        """Register again whenever the images offered change (``nixfarm image install``)."""
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.image_poll)
                return
            try:
                now = await asyncio.to_thread(self.offered)
                builds = await asyncio.to_thread(self._image_builds)
                if now != self._offered or builds != self._builds:
                    await self.register(refresh=True)
            except Exception as e:  # tried again at the next look
                log.warning("runner %s: cannot offer its images anew: %s", self.name, e)

    async def serve(self) -> None:
        """Register, then claim and run jobs until stopped (``stop``) or cancelled."""
        await asyncio.to_thread(sweep, self.work_root)  # what a killed predecessor left
        registering = asyncio.ensure_future(
            retried(runner_calls(f"runner {self.name}: registering", log), self.register))
        if not await self._unless_stopping(registering):
            return
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._watch_images())
                if self.image_updates is not None:
                    group.create_task(self.image_updates.run(
                        self._stopping, lambda: self.register(refresh=True)))
                for slot in range(self.slots):
                    group.create_task(self._slot(slot))
        finally:
            # Kept sandboxes end with the runner (their holds see it stopping).
            holds = list(self._holds.values())
            if not self._stopping.is_set():
                for task in holds:
                    task.cancel()
            if holds:
                await asyncio.gather(*holds, return_exceptions=True)
            if self.nix is not None:
                await self.nix.stop()

    async def stop(self, grace: float) -> None:
        """Claim nothing more; give the running jobs ``grace`` seconds, then interrupt
        them (see the module doc). ``serve`` returns once they are reported."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._running:
            log.warning("runner %s stopping: %d job(s) running get %g s to finish",
                        self.name, len(self._running), grace)
        jobs = [job for job, _ in self._running.values()]
        if jobs:
            await asyncio.wait(jobs, timeout=grace)
        for job_id, (job, stop_reason) in list(self._running.items()):
            if job.done():
                continue  # ended in time: reported as it ended
            log.warning("job %d: interrupted, the runner stops", job_id)
            stop_reason.append(INTERRUPTED)
            job.cancel()

    async def _unless_stopping(self, call: asyncio.Future[T]) -> bool:
        """Await ``call`` unless the agent is stopped first (then it is cancelled)."""
        await until_either(call, self._stopping)
        if not call.done():
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await call
            return False
        call.result()  # its error, if any
        return True

    async def nix_client(self, log_line: Callable[[str], None]) -> NixClient | None:
        """The Nix client for a sandbox, starting the daemon on first use."""
        if self.nix is None:
            return None
        async with self._nix_lock:
            try:
                return await self.nix.start()
            except NixfarmError as e:
                log.warning("runner %s: no Nix for jobs: %s", self.name, e.message)
                log_line(f"This runner has no Nix for jobs: {e.message}")
                return None

    async def _slot(self, slot: int) -> None:
        while not self._stopping.is_set():
            claim = asyncio.ensure_future(retried(
                runner_calls(f"runner {self.name} slot {slot}: claim", log),
                self.client.claim, self.claim_wait))
            if not await self._unless_stopping(claim):
                return
            assignment = claim.result()
            if assignment is not None and self._stopping.is_set():
                # Claimed as the runner began to stop: handed back unstarted.
                await self._finish(assignment, JobResult(
                    "interrupted", "", f"runner {self.name} stopped before it began"))
            elif assignment is not None:
                await self.execute(assignment)

    async def execute(self, a: Assignment) -> JobResult | None:
        """Run one job to its end and report it; None when the lease was lost."""
        shipper = LogShipper(self.client, a.job_id, start={
            (name or None): seq for name, seq in a.resume_logs.items()})
        shipper.start()
        reporter = _HttpReporter(self.client, a.job_id, shipper)
        stop_reason: list[str] = []
        work_dir = Path(tempfile.mkdtemp(prefix=f"job-{a.job_id}-", dir=self._work_root()))
        kept: list[Sandbox] = []  # the sandbox, when the job's end keeps it for shells
        job = asyncio.create_task(self._run(a, reporter, work_dir, kept))
        self._running[a.job_id] = (job, stop_reason)
        beat = asyncio.create_task(self._heartbeats(a, job, stop_reason))
        result: JobResult | None = None
        lost = abandoned = False
        try:
            result = await job
        except asyncio.CancelledError:
            if not stop_reason:
                abandoned = True
                raise  # the agent itself is stopping, at once
        except LeaseLost:
            lost = True
        finally:
            self._running.pop(a.job_id, None)
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError, LeaseLost):
                await beat
            if abandoned:
                await shipper.abandon()
            else:
                if stop_reason and stop_reason[0] == INTERRUPTED:
                    shipper.line(reporter.current, INTERRUPTED_LINE)
                with contextlib.suppress(NixfarmError):
                    await shipper.close()
            shutil.rmtree(work_dir, ignore_errors=True)
        if stop_reason and stop_reason[0] == "lost":
            lost = True
        if lost:
            log.warning("job %d: lease lost; dropped", a.job_id)
            for sandbox in kept:
                await sandbox.shutdown()
            return None
        if result is None:
            if stop_reason and stop_reason[0] == INTERRUPTED:
                result = JobResult("interrupted", "", f"runner {self.name} stopped")
            else:
                # Stopped by the server (cancelled or out of time): it keeps that status.
                result = JobResult("failed", "", stop_reason[0] if stop_reason else "stopped")
        if not kept:
            await self._finish(a, result)
            return result
        try:
            await self._finish(a, result, held=True)
        except BaseException:
            await kept[0].shutdown()
            raise
        self._holds[a.job_id] = asyncio.create_task(self._hold(a, kept[0]))
        return result

    async def _hold(self, a: Assignment, sandbox: Sandbox) -> None:
        try:
            await hold(self.client, a.job_id, sandbox, a.heartbeat_wait,
                       self._stopping.wait())
        except Exception:
            log.exception("job %d: serving its kept sandbox failed", a.job_id)
        finally:  # (``hold`` shuts the sandbox down, whatever happened)
            self._holds.pop(a.job_id, None)

    async def _finish(self, a: Assignment, result: JobResult, held: bool = False) -> None:
        status: Literal["success", "failed", "interrupted"] = (
            result.status if result.status in ("success", "interrupted") else "failed")
        reason = None if status == "success" else (result.message or result.status)
        step = result.step if status == "failed" else None
        body = FinishRequest(status=status, reason=reason, failed_step=step or None, held=held)
        with contextlib.suppress(LeaseLost):
            await self.client.finish(a.job_id, body)

    def _work_root(self) -> Path:
        self.work_root.mkdir(parents=True, exist_ok=True)
        return self.work_root

    async def _run(self, a: Assignment, reporter: _HttpReporter, work_dir: Path,
                   kept: list[Sandbox]) -> JobResult:
        shipper = reporter.shipper
        if a.attempt > 1:
            shipper.line(None, f"nixfarm: run {a.attempt} of this job (the previous one was "
                               "cut off)")
        manifest = manifest_from_data(a.manifest)
        nix_client = None
        # The catalogue, read once for the job: here and by its boot step.
        choice = await asyncio.to_thread(self.images.choose, manifest.image, manifest.arch)
        if choice.composes:  # nix, nix/*
            nix_client = await self.nix_client(lambda text: shipper.line(None, text))
        seconds_left = (a.deadline - datetime.now(UTC)).total_seconds()
        ctx = JobContext(
            manifest=manifest,
            images=self.images,
            image_choice=choice,
            new_sandbox=self.new_sandbox,
            log=shipper.line,
            report=reporter,
            work_dir=work_dir,
            # By UUID, as builds.sr.ht names ~/.ssh/<uuid>: a UUID is always a file name.
            secrets=[Secret(name=s.uuid, kind=s.kind, value=base64.b64decode(s.data),
                            path=s.path or "", mode=s.mode if s.mode is not None else 0o600)
                     for s in a.secrets],
            environment={"JOB_ID": str(a.job_id), "JOB_URL": a.job_url},
            network=a.network,
            timeout=max(seconds_left, 1.0),
            local_sources=self.local_sources,
            nix_client=nix_client,
            push_cache=pusher(a.cache) if a.cache is not None and nix_client else None,
            home_size=a.limits.home_bytes, log_limit=a.limits.log_bytes,
            max_artifacts=a.limits.artifacts, artifact_limit=a.limits.artifact_bytes,
        )
        if a.shell_hold_seconds > 0 and len(self._holds) < self.slots:
            ctx.keep_sandbox = lambda result: result.status != "success" or manifest.shell
        elif a.shell_hold_seconds > 0 and manifest.shell:
            shipper.line(None, f"nixfarm: this runner keeps {len(self._holds)} sandboxes for "
                               "shells already, its most: this job's will not be kept")
        result = await run_job(ctx)
        if ctx.kept and ctx.sandbox is not None:
            shipper.line(None, f"nixfarm: the sandbox is kept for {a.shell_hold_seconds / 60:g} "
                               f"minutes: nixfarm shell {a.job_id} (or nixfarm ssh "
                               f"{a.job_id}, where the image has an SSH server)")
            kept.append(ctx.sandbox)
        return result

    async def _heartbeats(self, a: Assignment, job: asyncio.Task[JobResult],
                          stop_reason: list[str]) -> None:
        while not job.done():
            try:
                answer = await retried(runner_calls(f"job {a.job_id}: heartbeat", log),
                                       self.client.heartbeat, a.job_id, a.heartbeat_wait)
            except LeaseLost:
                stop_reason.append("lost")
                job.cancel()
                return
            if answer.stop:
                stop_reason.append(answer.reason or "stopped")
                job.cancel()
                return
