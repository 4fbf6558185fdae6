"""Outbound-only networking for a sandbox's own network namespace (slirp4netns).

Both sandboxes use it: bwrap's jobs with network, the runner's nix-daemon for them
(``runner.nixd``: their fixed-output derivations), and the qemu of a VM with network
(whose user-mode stack would otherwise map the guest's 10.0.2.2 to the host's
loopback). ``--disable-host-loopback`` is the point: connections go out, but nothing
listening on the runner's 127.0.0.1 (Redis, PostgreSQL, the farm) is reachable.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

from nixfarm.runner.sandbox.base import SandboxError
from nixfarm.runner.sandbox.processes import kill_group

#: slirp4netns's DNS forwarder, as seen from the namespace it connects.
SLIRP_DNS = "10.0.2.3"


def resolv_conf(directory: Path) -> Path:
    """A resolv.conf in ``directory`` naming slirp's DNS forwarder, readable by all: to be
    bound over /etc/resolv.conf where the network is slirp's (the host's may name a
    resolver on its loopback, out of reach there)."""
    resolv = directory / "resolv.conf"
    resolv.write_text(f"nameserver {SLIRP_DNS}\n")
    resolv.chmod(0o644)
    return resolv


async def connect_slirp(netns: str, name: str, *, ready_within: float,
                        setpriv: str = "setpriv") -> asyncio.subprocess.Process:
    """Attach slirp4netns to the namespace at ``netns`` (``/proc/PID/ns/net``) as tap0,
    configured (10.0.2.100/24, gateway 10.0.2.2, DNS 10.0.2.3); return its process once
    the namespace is connected. It dies with the caller (``--pdeathsig``)."""
    slirp = shutil.which("slirp4netns")
    if slirp is None:
        raise SandboxError("Jobs with network need slirp4netns (Debian's slirp4netns "
                           "package), which is not installed.", sandbox=name)
    ready_read, ready_write = os.pipe()
    try:
        process = await asyncio.create_subprocess_exec(
            setpriv, "--pdeathsig", "KILL", "--", slirp, "--configure",
            "--mtu=65520", "--disable-host-loopback", "--enable-sandbox",
            f"--ready-fd={ready_write}", "--netns-type=path", netns, "tap0",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, pass_fds=(ready_write,),
            start_new_session=True)  # fmt: skip
    finally:
        os.close(ready_write)
    try:
        ready = await asyncio.wait_for(asyncio.to_thread(os.read, ready_read, 1),
                                       ready_within)
    except TimeoutError:
        ready = b""
    finally:
        os.close(ready_read)
    if ready != b"1":
        kill_group(process)
        assert process.stdout is not None
        said = (await process.stdout.read()).decode(errors="replace").strip()
        raise SandboxError(f"slirp4netns did not connect the sandbox: {said or 'no word'}",
                           sandbox=name)
    return process
