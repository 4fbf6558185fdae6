"""``nixfarm ssh JOB [SSH OPTIONS...] [-- CMD...]``: the user's own ``ssh`` into a held
job's sandbox, carried over the server like ``nixfarm shell`` (docs/jobs.md).

``nixfarm ssh`` opens the session over the server's WebSocket first (so a refusal is
one sentence, before ssh runs), listens on a Unix socket in a private temporary
directory, and runs ``ssh`` with ``ProxyCommand`` set to ``nixfarm ssh-relay
--socket``, which joins ssh's stdin and stdout to that socket; the runner joins the
session to an sshd it starts inside the sandbox on demand. So neither the runner nor
the server opens a port for it. With ``--config`` (scp, rsync) each connection's
relay opens a session of its own.

Keys. A key pair made for the session (``ssh-keygen``, in a private temporary
directory removed at the end), or the user's own (``--key``): the relay sends its
public half, which the runner adds to the build user's ``authorized_keys``.

Host key checking. The runner makes one host key per held sandbox and reports its
public half with the session's opening; the relay writes it, under the alias
``nixfarm-job-JOB``, into a known_hosts file of the session's own before it relays a
byte, and ssh runs with ``HostKeyAlias`` and ``StrictHostKeyChecking=yes`` against
that file only. The key's authenticity comes from the channel that carried it (the
server, reached over HTTPS with the user's token): this pins the SSH connection to
the sshd the runner started, not to whatever else listens in the sandbox, with no
trust-on-first-use prompt. Nothing is kept across sessions: each held sandbox has a
new key, so a kept file would only gather stale entries (and collide between farms
with the same job numbers).

``--config`` prints the path of an ssh_config file (a ``Host nixfarm-job-JOB`` block
in ``$XDG_STATE_HOME/nixfarm/ssh/HOST-PORT/job-JOB/``, with a key pair made once for
the job)
for scp, rsync and other ssh tooling: ``scp -F "$(nixfarm ssh 42 --config)"
nixfarm-job-42:file .``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer

from nixfarm.cli.common import DataDir, Exit, JobNumber, Token, Url, out, run
from nixfarm.client.api import resolve
from nixfarm.client.shell import Shell, open_ssh
from nixfarm.errors import InvalidInput, NixfarmError, PrerequisiteMissing
from nixfarm.runner.shielding import first_done

#: ssh's options that take an argument (``ssh(1)``): how its arguments are split into
#: options and the remote command, as ssh itself does.
_WITH_ARGUMENT = set("BbcDEeFIiJLlmOoPpQRSWw")


def alias(job: int) -> str:
    return f"nixfarm-job-{job}"


def split_ssh_args(args: list[str]) -> tuple[list[str], list[str]]:
    """(ssh's options, the remote command) as ssh would read ``args``."""
    options: list[str] = []
    at = 0
    while at < len(args) and args[at].startswith("-") and args[at] != "-":
        arg = args[at]
        options.append(arg)
        at += 1
        # "-L spec": the letter is the last of the cluster and nothing follows it.
        letters = arg[1:]
        for n, letter in enumerate(letters):
            if letter in _WITH_ARGUMENT:
                if n == len(letters) - 1 and at < len(args):
                    options.append(args[at])
                    at += 1
                break
    return options, args[at:]


def _program(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise PrerequisiteMissing(f"{name} is not installed: nixfarm ssh runs OpenSSH's "
                                  "client (Debian: apt-get install openssh-client)")
    return found


def _nixfarm() -> list[str]:
    """How ssh runs this program again (as the relay)."""
    me = Path(sys.argv[0])
    if me.name == "nixfarm" and me.is_file() and os.access(me, os.X_OK):
        return [str(me.absolute())]
    return [sys.executable, "-c", "import sys; sys.argv[0] = 'nixfarm'; "
                                  "from nixfarm.cli.main import main; main()"]


def _key_pair(directory: Path, job: int) -> tuple[Path, Path]:
    """A new ed25519 key pair in ``directory``: (the identity, the public key)."""
    private = directory / "id_ed25519"
    subprocess.run([_program("ssh-keygen"), "-q", "-t", "ed25519", "-N", "",
                    "-C", f"nixfarm-ssh-job-{job}", "-f", str(private)],
                   check=True, stdin=subprocess.DEVNULL)
    return private, Path(f"{private}.pub")


def _own_key(key: Path) -> tuple[Path, Path]:
    """(the identity ssh uses, the public key sent) of ``--key``: a private key with
    its .pub beside it, or a .pub (its private key beside it, or in ssh-agent)."""
    if key.name.endswith(".pub"):
        public = key
        beside = key.with_name(key.name.removesuffix(".pub"))
        identity = beside if beside.is_file() else key  # ssh asks the agent for it
    else:
        identity, public = key, key.with_name(f"{key.name}.pub")
        if not key.is_file():
            raise InvalidInput(f"--key {key}: no such key file", field="key")
    if not public.is_file():
        raise InvalidInput(f"--key {key}: its public key {public} is missing (make it "
                           f"with ssh-keygen -y -f {key} > {public})", field="key")
    return identity, public


def _options(job: int, identity: Path, directory: Path, relay: list[str]
             ) -> dict[str, str]:
    return {
        "User": "build",
        "ProxyCommand": " ".join(shlex.quote(a) for a in relay),
        "HostKeyAlias": alias(job),
        "UserKnownHostsFile": str(directory / "known_hosts"),
        "GlobalKnownHostsFile": "/dev/null",
        "StrictHostKeyChecking": "yes",
        "UpdateHostKeys": "no",
        "CheckHostIP": "no",
        "IdentityFile": str(identity),
        "IdentitiesOnly": "yes",
        "PasswordAuthentication": "no",
        "KbdInteractiveAuthentication": "no",
    }


def _state_dir(url: str, job: int) -> Path:
    """Where ``--config`` keeps JOB's key, known_hosts and ssh_config: per farm (two
    farms each have a job 1), named by the farm's host and port."""
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    parts = urlsplit(url)
    farm = re.sub(r"[^A-Za-z0-9.-]+", "-", f"{parts.netloc}{parts.path}".strip("/"))
    directory = state / "nixfarm" / "ssh" / (farm or "farm") / f"job-{job}"
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    return directory


def ssh(
    job: JobNumber,
    args: Annotated[list[str] | None, typer.Argument(
        metavar="SSH-ARGS...",
        help="Options for ssh (-L 8080:localhost:80, -v, ...), then (after --) a "
             "command to run instead of a login shell.", show_default=False)] = None,
    key: Annotated[Path | None, typer.Option(
        "--key", help="Your own key (a private key with its .pub beside it, or a .pub "
                      "whose private key is in ssh-agent) instead of a key pair made "
                      "for the session.", show_default=False)] = None,
    config: Annotated[bool, typer.Option(
        "--config", help="Print the path of an ssh_config file with a Host "
                         "nixfarm-job-JOB for scp, rsync and other ssh tools, and exit.")
    ] = False,
    url: Url = None, token: Token = None, data_dir: DataDir = None,
) -> None:
    """SSH into JOB's held sandbox (as user build) with your own ssh: scp, rsync and port
    forwards work too. Exits with ssh's exit status."""
    endpoint = resolve(url, token, data_dir)
    if config:
        directory = _state_dir(endpoint.url, job)
        made = directory / "id_ed25519"
        identity, public = _own_key(key) if key else (
            (made, Path(f"{made}.pub")) if Path(f"{made}.pub").is_file()
            else _key_pair(directory, job))
        relay = [*_nixfarm(), "ssh-relay", str(job), "--public-key", str(public),
                 "--known-hosts", str(directory / "known_hosts"), "--url", endpoint.url]
        if data_dir:
            relay += ["--data-dir", data_dir]
        lines = [f"Host {alias(job)}"] + [
            f"  {name} {value}" for name, value in
            _options(job, identity, directory, relay).items()]
        (directory / "config").write_text("\n".join(lines) + "\n")
        out.print(str(directory / "config"), markup=False)
        return
    options, command = split_ssh_args(list(args or []))
    program = _program("ssh")
    with tempfile.TemporaryDirectory(prefix="nixfarm-ssh-") as temporary:
        directory = Path(temporary)
        identity, public_file = _own_key(key) if key else _key_pair(directory, job)
        socket_path = directory / "relay.sock"
        relay = [*_nixfarm(), "ssh-relay", str(job), "--socket", str(socket_path)]
        argv = [program]
        for name, value in _options(job, identity, directory, relay).items():
            argv += ["-o", f"{name}={value}"]
        argv += [*options, alias(job), *command]
        try:
            line = public_file.read_text().strip()
        except OSError as e:
            raise InvalidInput(f"cannot read {public_file}: {e.strerror}", field="key"
                               ) from None

        async def work() -> int:
            async with open_ssh(endpoint, job, line) as (session, host_key):
                _write_known_hosts(directory / "known_hosts", f"{alias(job)} {host_key}\n")
                return await _serve(session, socket_path, argv)

        status = run(work)
    if status:
        raise Exit(status)


async def _serve(session: Shell, socket_path: Path, argv: list[str]) -> int:
    """Run ssh (``argv``); join its relay's connection to ``socket_path`` to the
    session; return ssh's exit status."""
    connected: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
        asyncio.get_running_loop().create_future())

    def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if connected.done():
            writer.close()  # one connection: the session is one SSH connection
        else:
            connected.set_result((reader, writer))

    server = await asyncio.start_unix_server(accept, path=str(socket_path))
    # ^C is ssh's (or a key in a remote pty): here it would end the relay under ssh's
    # feet. Caught, not ignored: ssh keeps an ignored SIGINT ignored, a caught one is
    # reset by exec.
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, lambda: None)
    try:
        process = await asyncio.create_subprocess_exec(*argv)
        exited = asyncio.ensure_future(process.wait())
        first: list[asyncio.Future[Any]] = [exited, connected]
        await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        if connected.done():
            reader, writer = connected.result()
            pump = asyncio.ensure_future(_join(session, reader, writer))
            await asyncio.wait([exited, pump], return_when=asyncio.FIRST_COMPLETED)
            if not exited.done():
                # The session ended (sshd is gone): ssh ends as its connection closes.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(exited), 30)
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump
            writer.close()
        if not exited.done():
            process.kill()
        return await exited
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        server.close()


async def _join(session: Shell, reader: asyncio.StreamReader,
                writer: asyncio.StreamWriter) -> None:
    """The relay's connection to the session and back, until either ends."""
    async def upstream() -> None:
        while data := await reader.read(65536):
            await session.send(data)

    async def downstream() -> None:
        with contextlib.suppress(NixfarmError):  # an end without a status: sshd's gone
            async for data in session.output():
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()

    await first_done(upstream(), downstream())


def ssh_relay(
    job: JobNumber,
    socket_path: Annotated[Path | None, typer.Option(
        "--socket", help="Join stdin and stdout to this Unix socket (nixfarm ssh's).")
    ] = None,
    public_key: Annotated[Path | None, typer.Option(
        "--public-key", help="Open a session of its own, letting this .pub in.")] = None,
    known_hosts: Annotated[Path | None, typer.Option(
        "--known-hosts", help="Where to write the sandbox's host key.")] = None,
    url: Url = None, token: Token = None, data_dir: DataDir = None,
) -> None:
    """ssh's ProxyCommand for nixfarm ssh: the session's bytes on stdin and stdout."""
    if socket_path is not None:
        async def joined() -> None:
            reader, writer = await asyncio.open_unix_connection(str(socket_path))

            async def receive() -> AsyncIterator[bytes]:
                while data := await reader.read(65536):
                    yield data

            async def send(data: bytes) -> None:
                writer.write(data)
                await writer.drain()

            await _stdio(send, receive())

        run(joined)
        return
    if public_key is None or known_hosts is None:
        raise InvalidInput("ssh-relay needs --socket, or --public-key and --known-hosts",
                           field="socket")
    endpoint = resolve(url, token, data_dir)
    try:
        key = public_key.read_text().strip()
    except OSError as e:
        raise InvalidInput(f"cannot read {public_key}: {e.strerror}",
                           field="public_key") from None
    written = known_hosts

    async def work() -> None:
        async with open_ssh(endpoint, job, key) as (session, host_key):
            _write_known_hosts(written, f"{alias(job)} {host_key}\n")

            async def receive() -> AsyncIterator[bytes]:
                with contextlib.suppress(NixfarmError):  # sshd's gone
                    async for data in session.output():
                        yield data

            await _stdio(session.send, receive())

    run(work)


def _write_known_hosts(path: Path, line: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(line)
    temporary.replace(path)


async def _stdio(send: Callable[[bytes], Awaitable[None]],
                 receive: AsyncIterator[bytes]) -> None:
    """stdin to ``send`` and ``receive`` to stdout, until either ends; within a chunk
    or two of memory (the server's window and the socket do the rest)."""
    loop = asyncio.get_running_loop()
    fds = (sys.stdin.fileno(), sys.stdout.fileno())
    blocking = [os.get_blocking(fd) for fd in fds]
    for fd in fds:
        os.set_blocking(fd, False)

    async def wait(add: str, remove: str, fd: int) -> None:
        ready: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        getattr(loop, add)(fd, wake)
        try:
            await ready
        finally:
            getattr(loop, remove)(fd)

    async def upstream() -> None:
        while True:
            await wait("add_reader", "remove_reader", fds[0])
            try:
                data = os.read(fds[0], 65536)
            except BlockingIOError:
                continue
            except OSError:
                return
            if not data:
                return
            await send(data)

    async def downstream() -> None:
        async for data in receive:
            view = memoryview(data)
            while view:
                try:
                    view = view[os.write(fds[1], view):]
                except BlockingIOError:
                    await wait("add_writer", "remove_writer", fds[1])

    try:
        await first_done(upstream(), downstream())
    finally:
        for fd, was in zip(fds, blocking, strict=True):
            with contextlib.suppress(OSError):
                os.set_blocking(fd, was)
