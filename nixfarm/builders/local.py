"""The ``local`` provider: a builder is a qemu VM on the server's own host that netboots.

Nothing is special about it once it runs: qemu's iPXE ROM (Debian's ``ipxe-qemu``)
asks qemu's user-mode network (slirp) for an address, gets the farm's per-builder iPXE
script as its boot file, and follows the same chain a cloud machine does (kernel,
initramfs, bootstrap, enrollment). The guest reaches the host's loopback at
``10.0.2.2``: a loopback host in the boot URL is rewritten to it for the firmware, and
the farm's iPXE script tells the bootstrap (``nixfarm.loopback=10.0.2.2``) to forward
the guest's own loopback port of the farm's URL there, so that the server URL in the
user data, and every URL the farm hands out (cache pushes, release sources), work
unchanged inside the builder. The user data reaches the guest through qemu's firmware configuration
(``opt/nixfarm/user-data``, from a file only the farm's user can read: never on
qemu's command line). The machine's disk is a fresh qcow2 file (the bootstrap makes
it encrypted swap); its RAM, vCPUs and disk come from the pool's ``plan``:
``<vcpus>c-<MiB>m-<GiB>g`` (default ``2c-2048m-8g``).

The instance is the qemu process: its state directory
``<data dir>/builders/local/<id>/`` holds ``meta.json`` (label, tags, pid),
``user-data.json``, ``disk.qcow2`` and ``serial.log`` (the machine's serial console,
as qemu sees it). ``destroy`` kills the process and removes the directory. The
accelerator is KVM where it works, TCG otherwise (``nixfarm.runner.vm.accel``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from nixfarm.builders.base import Instance, InstanceSpec, InstanceState
from nixfarm.errors import ProviderError
from nixfarm.runner.vm.accel import probe

QEMU = "qemu-system-x86_64"
IPXE_ROM = Path("/usr/lib/ipxe/qemu/efi-virtio.rom")
#: The host as qemu's user-mode network shows it to the guest.
HOST_FROM_GUEST = "10.0.2.2"
_LOOPBACK = {"127.0.0.1", "localhost", "::1", "0.0.0.0", "[::1]"}
_PLAN = re.compile(r"^(\d{1,3})c-(\d{2,7})m-(\d{1,5})g$")
DEFAULT_PLAN = "2c-2048m-8g"


def guest_url(url: str) -> str:
    """``url`` as the guest must write it: a loopback host becomes ``10.0.2.2``."""
    parts = urlsplit(url)
    if parts.hostname in _LOOPBACK or parts.hostname == "::1":
        netloc = HOST_FROM_GUEST + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def parse_plan(plan: str) -> tuple[int, int, int]:
    """(vCPUs, MiB of RAM, GiB of disk) of a local plan; ProviderError if malformed."""
    match = _PLAN.match(plan or DEFAULT_PLAN)
    if match is None:
        raise ProviderError(f"local plan {plan!r} is not <vcpus>c-<MiB>m-<GiB>g "
                            f"(such as {DEFAULT_PLAN})", provider="local", status=400)
    vcpus, memory, disk = (int(group) for group in match.groups())
    if not (1 <= vcpus <= 64 and memory >= 256 and disk >= 1):
        raise ProviderError(f"local plan {plan!r}: 1-64 vCPUs, at least 256 MiB and 1 GiB",
                            provider="local", status=400)
    return vcpus, memory, disk


class LocalProvider:
    name = "local"
    #: The user data is in qemu's firmware configuration; the farm's loopback address
    #: is the host's, at 10.0.2.2 (the bootstrap forwards the guest's own to it).
    boot_args = f"nixfarm.userdata=fwcfg nixfarm.loopback={HOST_FROM_GUEST}"

    def __init__(self, root: Path, qemu: str = QEMU) -> None:
        self.root = root
        self.qemu = qemu

    async def create(self, spec: InstanceSpec) -> Instance:
        vcpus, memory, disk = parse_plan(spec.plan)
        for tool in (self.qemu, "qemu-img"):
            if shutil.which(tool) is None:
                raise ProviderError(f"the local provider needs {tool} (qemu-system-x86 and "
                                    "qemu-utils)", provider="local", status=500)
        if not await asyncio.to_thread(IPXE_ROM.exists):
            raise ProviderError(f"the local provider needs {IPXE_ROM} (Debian's ipxe-qemu)",
                                provider="local", status=500)
        accel = await probe(self.qemu)
        instance_id = f"local-{secrets.token_hex(6)}"
        where = self.root / instance_id
        await asyncio.to_thread(self._prepare, where, spec, disk)
        argv = [
            self.qemu, "-accel", accel.name, "-M", "pc",
            "-cpu", "host" if accel.name == "kvm" else "max",
            "-smp", str(vcpus), "-m", f"{memory}M", "-name", spec.name,
            "-nodefaults", "-display", "none", "-monitor", "none", "-no-reboot",
            "-serial", f"file:{where / 'serial.log'}",
            "-fw_cfg", f"name=opt/nixfarm/user-data,file={where / 'user-data.json'}",
            "-drive", f"file={where / 'disk.qcow2'},if=virtio,format=qcow2",
            "-netdev", f"user,id=net0,bootfile={guest_url(spec.boot_url)}",
            # qemu loads its default ROM for the card: Debian's ipxe-qemu (IPXE_ROM).
            "-device", "virtio-net-pci,netdev=net0",
            "-boot", "n",
        ]  # fmt: skip
        with (where / "qemu.log").open("wb") as log:
            process = await asyncio.to_thread(
                subprocess.Popen, argv, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, cwd=where)
        await asyncio.sleep(0.3)  # a qemu that refuses its options ends at once
        if process.poll() is not None:
            said = (where / "qemu.log").read_text(errors="replace").strip()
            await asyncio.to_thread(shutil.rmtree, where, True)
            raise ProviderError(f"qemu ended at once ({process.returncode}): {said[-500:]}",
                                provider="local", status=500)
        meta = self._meta(where)
        meta.update(pid=process.pid, accelerator=accel.describe())
        await asyncio.to_thread(self._write_meta, where, meta)
        # The farm's process is qemu's parent: reap it when it ends, so that a
        # destroyed (or powered-off) machine leaves no zombie.
        asyncio.get_running_loop().run_in_executor(None, process.wait)
        return self._instance(instance_id, meta)

    def _prepare(self, where: Path, spec: InstanceSpec, disk: int) -> None:
        where.mkdir(parents=True, mode=0o700)
        fd = os.open(where / "user-data.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(spec.user_data)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(where / "disk.qcow2"),
                        f"{disk}G"], check=True, capture_output=True, timeout=60)
        self._write_meta(where, {"label": spec.name, "tags": list(spec.tags), "pid": 0})

    @staticmethod
    def _meta(where: Path) -> dict[str, object]:
        data: dict[str, object] = json.loads((where / "meta.json").read_text())
        return data

    @staticmethod
    def _write_meta(where: Path, meta: dict[str, object]) -> None:
        partial = where / ".meta.json"
        partial.write_text(json.dumps(meta))
        partial.replace(where / "meta.json")

    def _alive(self, where: Path, meta: dict[str, object]) -> bool:
        pid = meta.get("pid")
        if not isinstance(pid, int) or pid <= 0:
            return False
        try:  # our qemu, not a pid reused by something else
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        return str(where).encode() in cmdline and stat.rsplit(")", 1)[1].split()[0] != "Z"

    def _instance(self, instance_id: str, meta: dict[str, object]) -> Instance:
        where = self.root / instance_id
        state: InstanceState = "active" if self._alive(where, meta) else "stopped"
        tags = meta.get("tags")
        return Instance(id=instance_id, provider="local", state=state, ip=None,
                        label=str(meta.get("label", "")),
                        tags=tuple(str(t) for t in tags) if isinstance(tags, list) else ())

    def _read(self, instance_id: str) -> Instance | None:
        if not re.fullmatch(r"local-[0-9a-f]{12}", instance_id):
            return None
        try:
            meta = self._meta(self.root / instance_id)
        except (OSError, ValueError):
            return None
        return self._instance(instance_id, meta)

    async def get(self, instance_id: str) -> Instance | None:
        return await asyncio.to_thread(self._read, instance_id)

    async def list(self, tags: tuple[str, ...]) -> list[Instance]:
        def scan() -> list[Instance]:
            found: list[Instance] = []
            if not self.root.is_dir():
                return found
            for entry in sorted(self.root.iterdir()):
                instance = self._read(entry.name)
                if instance is not None and set(tags) <= set(instance.tags):
                    found.append(instance)
            return found

        return await asyncio.to_thread(scan)

    async def destroy(self, instance_id: str) -> None:
        if not re.fullmatch(r"local-[0-9a-f]{12}", instance_id):
            return
        where = self.root / instance_id

        def kill() -> None:
            try:
                meta = self._meta(where)
            except (OSError, ValueError):
                meta = {}
            pid = meta.get("pid")
            if isinstance(pid, int) and self._alive(where, meta):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)  # its own session: qemu and nothing else
                # Gone means gone: the process too, before its files (up to 5 s).
                for _ in range(100):
                    if not self._alive(where, meta):
                        break
                    time.sleep(0.05)
            shutil.rmtree(where, ignore_errors=True)

        await asyncio.to_thread(kill)

    async def close(self) -> None:
        return None
