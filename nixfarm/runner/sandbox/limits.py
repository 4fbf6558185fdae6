"""Resource limits for a sandbox: cgroups where we may create them, rlimits otherwise.

Three ways, tried in this order (``confine(..., prefer=...)`` can force one):

- **cgroup v2** (``/sys/fs/cgroup`` is ``cgroup2fs``): a child group of
  ``cgroup_parent`` (or of the runner's own group) with ``memory.max``, ``pids.max``
  and ``cpu.max``; killing is one write to ``cgroup.kill``. Enabling controllers for
  children needs a parent without processes of its own (the no-internal-processes
  rule), so a runner started as a plain process in a busy group usually cannot, and
  should be given a delegated ``cgroup_parent`` (systemd ``Delegate=yes``).
- **cgroup v1** (the hybrid layout, as on the machines nixfarm is developed on): a
  ``nixfarm-<name>`` group under the runner's own group in each of the ``memory``,
  ``pids`` and ``cpu`` hierarchies: ``memory.limit_in_bytes`` (and ``memsw`` so swap
  is no way out), ``pids.max``, ``cpu.cfs_quota_us``. Killing sends SIGKILL to every
  listed process until the groups are empty.
- **rlimits** (no cgroup we may write): ``prlimit`` on every process we start:
  RLIMIT_AS per process (not for the sandbox as a whole), RLIMIT_NPROC per host user
  (so each sandbox should have a host uid of its own), and no CPU share at all
  (RLIMIT_CPU caps CPU seconds per process, at the sandbox's timeout when it has one).

Every process a sandbox starts is started through ``prefix()``: a host ``/bin/sh``
that writes its own pid into each group's ``cgroup.procs`` and then execs the rest,
so nothing the sandbox runs is ever outside its groups, not even for an instant.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from nixfarm.runner.sandbox.base import SandboxError, SandboxSpec

CGROUP_ROOT = Path("/sys/fs/cgroup")
Kind = Literal["cgroup2", "cgroup1", "rlimit"]
_V1_CONTROLLERS = ("memory", "pids", "cpu")
_CFS_PERIOD = 100_000  # microseconds

# Joins the groups named by the first $1 arguments, then execs the rest.
_JOIN = (
    'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; shift; '
    'n=$((n - 1)); done; exec "$@"'
)


@dataclass
class Confinement:
    """The groups (or rlimits) one sandbox's processes live under."""

    kind: Kind
    groups: list[Path] = field(default_factory=list)
    rlimits: list[str] = field(default_factory=list)
    #: Why cgroups were not used, when they were not.
    reason: str = ""

    def prefix(self) -> list[str]:
        """The argv to put before a command so that it starts confined."""
        argv: list[str] = []
        if self.groups:
            argv += ["/bin/sh", "-c", _JOIN, "sh", str(len(self.groups))]
            argv += [str(g / "cgroup.procs") for g in self.groups]
        if self.rlimits:
            argv += ["prlimit", *self.rlimits, "--"]
        return argv

    def pids(self) -> set[int]:
        found: set[int] = set()
        for group in self.groups:
            with contextlib.suppress(OSError):
                found.update(int(p) for p in (group / "cgroup.procs").read_text().split())
        return found

    def oom_kills(self) -> int:
        """Processes the kernel has killed for the group's memory limit so far (0 with
        rlimits: there an allocation past the limit fails instead)."""
        for group in self.groups:
            for name in ("memory.events", "memory.oom_control"):  # v2, v1
                with contextlib.suppress(OSError, ValueError):
                    for line in (group / name).read_text().splitlines():
                        key, _, value = line.partition(" ")
                        if key == "oom_kill":
                            return int(value)
        return 0

    def kill(self) -> None:
        """SIGKILL everything in the groups (nothing to do for rlimits)."""
        for group in self.groups:
            with contextlib.suppress(OSError):
                (group / "cgroup.kill").write_text("1")
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def remove(self, wait: float = 5.0) -> None:
        """Kill what is left and remove the groups; the kernel needs them empty."""
        deadline = time.monotonic() + wait
        for group in self.groups:
            while group.exists():
                try:
                    group.rmdir()
                except OSError:
                    if time.monotonic() > deadline:
                        raise SandboxError(
                            f"Cannot remove cgroup {group}: processes are still in it.",
                            sandbox=group.name,
                        ) from None
                    self.kill()
                    time.sleep(0.01)
        self.groups = []


def confine(
    name: str,
    spec: SandboxSpec,
    *,
    prefer: Kind | None = None,
    cgroup_parent: Path | None = None,
) -> Confinement:
    """Create the groups for sandbox ``name`` with ``spec``'s limits (see module doc)."""
    reasons: list[str] = []
    kinds: list[Kind] = [prefer] if prefer else ["cgroup2", "cgroup1"]
    for kind in kinds:
        if kind == "rlimit":
            break
        try:
            groups = (
                _cgroup2(name, spec, cgroup_parent) if kind == "cgroup2" else _cgroup1(name, spec)
            )
        except _Unavailable as e:
            reasons.append(str(e))
            continue
        return Confinement(kind, groups=groups)
    return Confinement("rlimit", rlimits=_rlimits(spec), reason="; ".join(reasons))


class _Unavailable(Exception):
    pass


def _own_groups() -> dict[str, str]:
    """controller (or "" for v2) -> this process's group path, from /proc/self/cgroup."""
    own: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            own[controller] = path
    return own


def _cgroup2(name: str, spec: SandboxSpec, parent: Path | None) -> list[Path]:
    if not (CGROUP_ROOT / "cgroup.controllers").exists():
        raise _Unavailable("cgroup v2 is not mounted at /sys/fs/cgroup")
    if parent is None:
        parent = CGROUP_ROOT / _own_groups().get("", "/").lstrip("/")
    wanted = {"memory", "pids", "cpu"}
    try:
        enabled = set((parent / "cgroup.subtree_control").read_text().split())
        if not wanted <= enabled:
            (parent / "cgroup.subtree_control").write_text(
                " ".join(f"+{c}" for c in sorted(wanted - enabled))
            )
        group = parent / f"nixfarm-{name}"
        group.mkdir()
    except OSError as e:
        raise _Unavailable(f"cannot create a cgroup v2 group under {parent}: {e.strerror}") from e
    try:
        if spec.memory_limit is not None:
            (group / "memory.max").write_text(str(spec.memory_limit))
            with contextlib.suppress(FileNotFoundError):
                (group / "memory.swap.max").write_text("0")
        if spec.process_limit is not None:
            (group / "pids.max").write_text(str(spec.process_limit))
        if spec.cpu_limit is not None:
            (group / "cpu.max").write_text(f"{int(spec.cpu_limit * _CFS_PERIOD)} {_CFS_PERIOD}")
    except OSError as e:
        group.rmdir()
        raise _Unavailable(f"cannot set limits in {group}: {e.strerror}") from e
    return [group]


def _cgroup1(name: str, spec: SandboxSpec) -> list[Path]:
    own = _own_groups()
    groups: list[Path] = []
    try:
        for controller in _V1_CONTROLLERS:
            hierarchy = CGROUP_ROOT / controller
            if controller not in own or not (hierarchy / "cgroup.procs").exists():
                raise _Unavailable(f"no cgroup v1 {controller} hierarchy")
            group = hierarchy / own[controller].lstrip("/") / f"nixfarm-{name}"
            try:
                group.mkdir()
            except OSError as e:
                raise _Unavailable(f"cannot create {group}: {e.strerror}") from e
            groups.append(group)
            _limit_v1(controller, group, spec)
    except (_Unavailable, OSError) as e:
        for group in groups:
            group.rmdir()
        if isinstance(e, _Unavailable):
            raise
        raise _Unavailable(f"cannot set cgroup v1 limits: {e}") from e
    return groups


def _limit_v1(controller: str, group: Path, spec: SandboxSpec) -> None:
    if controller == "memory" and spec.memory_limit is not None:
        (group / "memory.limit_in_bytes").write_text(str(spec.memory_limit))
        # Memory plus swap at the same figure: swapping out is no way around the limit.
        with contextlib.suppress(FileNotFoundError):
            (group / "memory.memsw.limit_in_bytes").write_text(str(spec.memory_limit))
    elif controller == "pids" and spec.process_limit is not None:
        (group / "pids.max").write_text(str(spec.process_limit))
    elif controller == "cpu" and spec.cpu_limit is not None:
        (group / "cpu.cfs_period_us").write_text(str(_CFS_PERIOD))
        (group / "cpu.cfs_quota_us").write_text(str(int(spec.cpu_limit * _CFS_PERIOD)))


def _rlimits(spec: SandboxSpec) -> list[str]:
    limits = []
    if spec.memory_limit is not None:
        limits.append(f"--as={spec.memory_limit}")
    if spec.process_limit is not None:
        limits.append(f"--nproc={spec.process_limit}")
    if spec.cpu_limit is not None and spec.timeout is not None:
        limits.append(f"--cpu={int(spec.timeout * spec.cpu_limit) + 1}")
    return limits
