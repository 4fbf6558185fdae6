"""``nixfarm ssh JOB [SSH OPTIONS...] [-- CMD...]``: the user's own ``ssh`` into a held
job's sandbox, carried over the server like ``nixfarm shell`` (docs/jobs.md).

``ssh`` runs with ``ProxyCommand`` set to ``nixfarm ssh-relay``, which opens the
session over the server's WebSocket and relays its bytes on stdin and stdout; the
runner joins them to an sshd it starts inside the sandbox on demand. So neither the
runner nor the server opens a port for it.

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
in ``$XDG_STATE_HOME/nixfarm/ssh/job-JOB/``, with a key pair made once for the job)
for scp, rsync and other ssh tooling: ``scp -F "$(nixfarm ssh 42 --config)"
nixfarm-job-42:file .``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from nixfarm.cli.common import DataDir, Exit, JobNumber, Token, Url, err, out, run
from nixfarm.client.api import Endpoint, resolve
from nixfarm.client.shell import Shell, open_ssh
from nixfarm.errors import InvalidInput, NixfarmError, PrerequisiteMissing, exit_code

#: ssh's options that take an argument (``ssh(1)``): how its arguments are split into
#: options and the remote command, as ssh itself does.
_WITH_ARGUMENT = set("BbcDEeFIiJLlmOoPpQRSWw")
#: Where the relay leaves the exit code of an error it printed (ssh exits 255 then).
_ERROR_FILE = "error"


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


def _key_pair(directory: Path, job: int) -> Path:
    """A new ed25519 key pair in ``directory``: the private key's path."""
    private = directory / "id_ed25519"
    subprocess.run([_program("ssh-keygen"), "-q", "-t", "ed25519", "-N", "",
                    "-C", f"nixfarm-ssh-job-{job}", "-f", str(private)],
                   check=True, stdin=subprocess.DEVNULL)
    return private


def _own_key(key: Path) -> Path:
    if not key.is_file():
        raise InvalidInput(f"--key {key}: no such private key file", field="key")
    if not Path(f"{key}.pub").is_file():
        raise InvalidInput(f"--key {key}: its public key {key}.pub is missing (make it "
                           f"with ssh-keygen -y -f {key} > {key}.pub)", field="key")
    return key


def _options(job: int, private: Path, directory: Path, endpoint: Endpoint,
             data_dir: str | None) -> dict[str, str]:
    relay = [*_nixfarm(), "ssh-relay", str(job), "--public-key", f"{private}.pub",
             "--known-hosts", str(directory / "known_hosts"), "--url", endpoint.url]
    if data_dir:
        relay += ["--data-dir", data_dir]
    return {
        "User": "build",
        "ProxyCommand": " ".join(shlex.quote(a) for a in relay),
        "HostKeyAlias": alias(job),
        "UserKnownHostsFile": str(directory / "known_hosts"),
        "GlobalKnownHostsFile": "/dev/null",
        "StrictHostKeyChecking": "yes",
        "UpdateHostKeys": "no",
        "CheckHostIP": "no",
        "IdentityFile": str(private),
        "IdentitiesOnly": "yes",
        "PasswordAuthentication": "no",
        "KbdInteractiveAuthentication": "no",
    }


def _state_dir(job: int) -> Path:
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    directory = state / "nixfarm" / "ssh" / f"job-{job}"
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
        "--key", help="Your own private key (its .pub beside it is sent) instead of a "
                      "key pair made for the session.", show_default=False)] = None,
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
        directory = _state_dir(job)
        private = _own_key(key) if key else (
            directory / "id_ed25519" if (directory / "id_ed25519").is_file()
            else _key_pair(directory, job))
        lines = [f"Host {alias(job)}"] + [
            f"  {name} {value}" for name, value in
            _options(job, private, directory, endpoint, data_dir).items()]
        (directory / "config").write_text("\n".join(lines) + "\n")
        out.print(str(directory / "config"), markup=False)
        return
    options, command = split_ssh_args(list(args or []))
    program = _program("ssh")
    with tempfile.TemporaryDirectory(prefix="nixfarm-ssh-") as temporary:
        directory = Path(temporary)
        private = _own_key(key) if key else _key_pair(directory, job)
        argv = [program]
        for name, value in _options(job, private, directory, endpoint, data_dir).items():
            argv += ["-o", f"{name}={value}"]
        argv += [*options, alias(job), *command]
        env = {**os.environ}
        if endpoint.token:  # the relay's (ssh passes its environment on)
            env["NIXFARM_TOKEN"] = endpoint.token
        status = subprocess.run(argv, env=env).returncode
        failed = directory / _ERROR_FILE
        if status == 255 and failed.is_file():
            # The relay said why on stderr (ssh shows it); its code is the answer.
            code = failed.read_text().strip()
            status = int(code) if code.isdigit() else status
    if status:
        raise Exit(status)


def ssh_relay(
    job: JobNumber,
    public_key: Annotated[Path, typer.Option("--public-key", help="The .pub to let in.")],
    known_hosts: Annotated[Path, typer.Option(
        "--known-hosts", help="Where to write the sandbox's host key.")],
    url: Url = None, token: Token = None, data_dir: DataDir = None,
) -> None:
    """ssh's ProxyCommand for nixfarm ssh: the session's bytes on stdin and stdout."""
    try:
        endpoint = resolve(url, token, data_dir)
        key = public_key.read_text().strip()
    except OSError as e:
        err.print(f"error: cannot read {public_key}: {e.strerror}", markup=False)
        raise Exit(2) from None
    except NixfarmError as e:
        _failed(known_hosts, e)
        raise

    async def work() -> None:
        try:
            async with open_ssh(endpoint, job, key) as (session, host_key):
                _write_known_hosts(known_hosts, f"{alias(job)} {host_key}\n")
                await _relay(session)
        except NixfarmError as e:
            _failed(known_hosts, e)
            raise

    run(work)


def _failed(known_hosts: Path, error: NixfarmError) -> None:
    with contextlib.suppress(OSError):
        (known_hosts.parent / _ERROR_FILE).write_text(f"{exit_code(error)}\n")


def _write_known_hosts(path: Path, line: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(line)
    temporary.replace(path)


async def _relay(session: Shell) -> None:
    """stdin to the session and the session to stdout, until either ends; both within
    a chunk or two of memory (the server's window does the rest)."""
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
            await session.send(data)

    async def downstream() -> None:
        with contextlib.suppress(NixfarmError):  # the end without a status: sshd's gone
            async for data in session.output():
                view = memoryview(data)
                while view:
                    try:
                        view = view[os.write(fds[1], view):]
                    except BlockingIOError:
                        await wait("add_writer", "remove_writer", fds[1])

    tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task
        for fd, was in zip(fds, blocking, strict=True):
            with contextlib.suppress(OSError):
                os.set_blocking(fd, was)
