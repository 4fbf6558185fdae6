"""SSH into the guest, for ``nixfarm ssh``: its sshd, started on demand on a shell port.

No SSH in the hot path: nothing about SSH happens at boot. When a session asks,

1. the agent runs ``SETUP`` as root (its ``call``). It ends with status 3 when the
   image has no ``/usr/sbin/sshd``. Once per VM it makes the sandbox's host key with
   the image's own ``ssh-keygen`` (so the host needs no OpenSSH) and sshd's
   configuration, both under ``/run/nixfarm/private/ssh``; each time it adds the
   session's public key to the build user's ``~/.ssh/authorized_keys``; it prints
   the host's public key, which the runner hands the client for its known_hosts;
2. the agent's ``ssh N ID`` runs ``sshd -i`` on shell port N (``nixfarm.shN``, the
   ports ``nixfarm shell`` uses) after a line ``nixfarm-ssh-ID``;
3. ``SshStream`` relays the port's bytes as they are (no telnet: this is not a
   terminal). It sends nothing before that line: the guest drops what reaches a port
   no process has open, and the client's first bytes (its version line) must not be
   lost. What comes before the line (an earlier session's last bytes) is dropped.

Why ``sshd -i`` on the port rather than a connection to 127.0.0.1:22 in the guest:
the same byte stream with no listening daemon (nothing runs between sessions, no
port a job's own processes could have taken first, no client program such as ``nc``
needed in the guest), and sshd ends with its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from nixfarm.runner.vm.telnet import TelnetTerminal

#: Where the guest keeps sshd's host key and configuration (root's, in tmpfs).
STATE = "/run/nixfarm/private/ssh"
#: ``SETUP``'s status when the image has no sshd.
NO_SSHD = 3
#: Seconds ``SETUP`` may take (a key made under TCG takes well under one).
SETUP_SECONDS = 60.0

# $1: the public key to let in. The build user is uid 1000's name in /etc/passwd.
SETUP = rf"""
B=/run/nixfarm/busybox S={STATE}
[ -x /usr/sbin/sshd ] && [ -x /usr/bin/ssh-keygen ] || exit {NO_SSHD}
set -e
if [ ! -s $S/host_ed25519.pub ]; then
  $B mkdir -p -m 0700 $S
  $B rm -f $S/host_ed25519 $S/host_ed25519.pub
  /usr/bin/ssh-keygen -q -t ed25519 -N '' -C nixfarm-sandbox -f $S/host_ed25519
  user=$($B awk -F: '$3 == 1000 {{ print $1; exit }}' /etc/passwd)
  # No passwords, no PAM (the image's PAM stack expects a booted system), only keys,
  # only the build user; internal-sftp, for scp (OpenSSH 9 copies over SFTP) and rsync.
  $B cat > $S/sshd_config <<EOF
HostKey $S/host_ed25519
AuthorizedKeysFile .ssh/authorized_keys
AllowUsers ${{user:-build}}
PermitRootLogin no
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
PrintLastLog no
UseDNS no
Subsystem sftp internal-sftp
EOF
fi
$B mkdir -p -m 0755 /run/sshd
home=$($B awk -F: '$3 == 1000 {{ print $6; exit }}' /etc/passwd)
group=$($B awk -F: '$3 == 1000 {{ print $4; exit }}' /etc/passwd)
home=${{home:-/home/build}}
$B mkdir -p "$home/.ssh"
keys=$home/.ssh/authorized_keys
$B grep -qxF "$1" "$keys" 2>/dev/null || printf '%s\n' "$1" >> "$keys"
$B chown 1000:"${{group:-1000}}" "$home/.ssh" "$keys"
$B chmod 0700 "$home/.ssh"
$B chmod 0600 "$keys"
$B cat $S/host_ed25519.pub
"""


def marker(run_id: str) -> bytes:
    return f"nixfarm-ssh-{run_id}\n".encode()


class SshStream(TelnetTerminal):
    """An SSH connection's bytes on a shell port (``terminal.Terminal``): raw, and
    nothing sent before the guest's ``marker`` (see the module docstring)."""

    def __init__(self, port: socket.socket, run_id: str, done: asyncio.Future[int],
                 stop: Callable[[], Awaitable[None]], release: Callable[[], None]) -> None:
        self._marker = marker(run_id)
        self._before = b""
        self._started = asyncio.Event()
        super().__init__(port, done, stop, release)

    def _decode(self, chunk: bytes) -> bytes:
        if self._started.is_set():
            return chunk
        self._before += chunk
        at = self._before.find(self._marker)
        if at < 0:
            # Keep only what could be the start of the marker.
            self._before = self._before[-len(self._marker):]
            return b""
        rest = self._before[at + len(self._marker):]
        self._before = b""
        self._started.set()
        return rest

    async def started(self) -> None:
        """Return once sshd has the port (or the session ended first)."""
        if self._started.is_set():
            return
        waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(asyncio.shield(self._done)),
                                              asyncio.ensure_future(self._started.wait())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await waiter

    async def write(self, data: bytes) -> None:
        await self.started()
        if self._closed or self._done.done():
            return
        with contextlib.suppress(OSError):
            await asyncio.get_running_loop().sock_sendall(self._port, data)

    def resize(self, rows: int, cols: int) -> None:
        pass  # not a terminal: ssh carries its pty's size in its own protocol
