"""Which accelerator the runner's VMs use: KVM where it works, TCG otherwise.

``/dev/kvm`` existing is not enough. On machines that are themselves cloud VMs it
may be a paravirtual KVM (KVM-PVM, module ``kvm_pvm``), which runs only guests
built for it: a stock kernel hangs there. So we ask, in this order, and stop at
the first answer:

1. no ``/dev/kvm``, or not ours to open: TCG;
2. ``kvm_pvm`` is loaded: TCG, at once;
3. a 512-byte boot sector that writes ``K`` to the serial port, run with
   ``-accel kvm``: KVM if the ``K`` arrives within ``PROBE_SECONDS``, TCG if not.

Step 3 is what a stock kernel does first (real mode, a port write), and costs
~0.1-0.3 s where KVM works. The answer is kept for the life of the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

KVM_DEVICE = Path("/dev/kvm")
PVM_MODULE = Path("/sys/module/kvm_pvm")
PROBE_SECONDS = 0.8
#: mov dx, 0x3f8; mov al, 'K'; out dx, al; cli; hlt; jmp $-1; ... 0x55 0xaa
_BOOT_SECTOR = bytes([0xBA, 0xF8, 0x03, 0xB0, 0x4B, 0xEE, 0xFA, 0xF4, 0xEB, 0xFD])
_probed: dict[str, Accelerator] = {}


@dataclass(frozen=True)
class Accelerator:
    name: Literal["kvm", "tcg"]
    #: Why: "KVM works", or what ruled it out.
    reason: str
    #: Seconds the probe took.
    seconds: float = 0.0

    def describe(self) -> str:
        if self.name == "kvm":
            return "kvm"
        return f"tcg (software emulation: {self.reason})"


async def probe(qemu: str = "qemu-system-x86_64", *, fresh: bool = False,
                pvm_module: Path = PVM_MODULE) -> Accelerator:
    """The accelerator for this host (see the module docstring)."""
    if not fresh and qemu in _probed:
        return _probed[qemu]
    loop = asyncio.get_running_loop()
    started = loop.time()
    name, reason = await _decide(qemu, await asyncio.to_thread(_device_state, pvm_module))
    found = Accelerator(name, reason, loop.time() - started)
    _probed[qemu] = found
    return found


def _device_state(pvm_module: Path) -> str:
    if not KVM_DEVICE.exists():
        return f"there is no {KVM_DEVICE}"
    if not os.access(KVM_DEVICE, os.R_OK | os.W_OK):
        return f"{KVM_DEVICE} is not ours to open"
    if pvm_module.exists():
        return f"{KVM_DEVICE} is KVM-PVM (kvm_pvm), on which stock kernels hang"
    return ""


async def _decide(qemu: str, ruled_out: str) -> tuple[Literal["kvm", "tcg"], str]:
    if ruled_out:
        return "tcg", ruled_out
    if await boots(qemu, "kvm", PROBE_SECONDS):
        return "kvm", "KVM works"
    return "tcg", f"a test guest did not run under KVM within {PROBE_SECONDS:g} s"


async def boots(qemu: str, accel: str, seconds: float) -> bool:
    """Whether the probe's boot sector runs under ``accel`` within ``seconds``."""
    with tempfile.TemporaryDirectory(prefix="nixfarm-kvm-probe-") as scratch:
        disk = Path(scratch) / "boot.img"
        disk.write_bytes(_BOOT_SECTOR.ljust(510, b"\0") + b"\x55\xaa")
        try:
            process = await asyncio.create_subprocess_exec(
                qemu, "-accel", accel, "-M", "pc", "-cpu", "host" if accel == "kvm" else "max",
                "-m", "16",
                "-nodefaults", "-display", "none", "-monitor", "none", "-no-reboot",
                "-serial", "stdio", "-drive", f"file={disk},format=raw,if=ide,snapshot=on",
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
        except OSError:
            return False
        try:
            assert process.stdout is not None
            output = await asyncio.wait_for(process.stdout.read(1), seconds)
            return output == b"K"
        except TimeoutError:
            return False
        finally:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
