"""A minimal Debian 12 made with debootstrap, fresh every run, to run commands in as root.

What a new machine sees: nothing from this host but the network settings this machine
needs to reach Debian's and PyPI's registries — its DNS resolver, its CA bundle (this
network inspects TLS; kept as a separate file named by ``PIP_CERT`` and friends, because
Debian's ca-certificates rewrites /etc/ssl/certs inside the root), and its pip
configuration and ``PIP_*`` environment.

The root is its own mount and PID namespace: one holder process (``unshare``) mounts
/proc, /dev, /sys and a fresh /run, then ``pivot_root``s into the tree and sleeps as the
namespace's PID 1. A chroot would not do: the kernel refuses new user namespaces to a
chrooted process, and both Nix's sandbox and bubblewrap make them. Every command enters
with ``nsenter``; killing the holder ends every process started inside, and the mounts
go with the namespace. The network is the host's (the registries must be reachable), so
servers inside bind 127.0.0.1 ports the host can reach.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
#: Where the host's CA bundle lives inside the root (outside /etc/ssl/certs).
ROOT_CA = "/etc/nixfarm-host-ca.pem"
_CA_VARIABLES = ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
                 "NIX_SSL_CERT_FILE", "GIT_SSL_CAINFO")
_PIP_CONFIG = (Path("/etc/pip.conf"), Path("/etc/xdg/pip"))
ROOT_BUILD_UID = 40001
ROOT_BUILD_GID = 40000
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_HOLDER = r"""
set -eu
root=$1
mount --bind "$root" "$root"
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount --rbind /sys "$root/sys"
mount -t tmpfs -o mode=0755 tmpfs "$root/run"
mkdir -p "$root/.host"
cd "$root"
pivot_root . .host
umount -l /.host
rmdir /.host
echo ready
exec sleep infinity
"""


class StepFailed(AssertionError):
    """A command in the root exited non-zero; the message holds its output's tail."""


@dataclass
class Result:
    code: int
    output: str


class PristineRoot:
    """A debootstrapped Debian 12 under ``path``; see the module docstring."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._holder: subprocess.Popen[bytes] | None = None
        self._spawned: list[subprocess.Popen[bytes]] = []
        self.pid = 0  # the holder's PID 1, as the host sees it

    def bootstrap(self, log: Path) -> None:
        """debootstrap --variant=minbase, then the host's network settings."""
        with log.open("ab") as out:
            subprocess.run(
                ["debootstrap", "--variant=minbase", f"--keyring={KEYRING}", SUITE,
                 str(self.path), MIRROR],
                stdout=out, stderr=subprocess.STDOUT, check=True, timeout=900)
        etc = self.path / "etc"
        shutil.copyfile("/etc/resolv.conf", etc / "resolv.conf")
        if HOST_CA.exists():
            shutil.copyfile(HOST_CA, self.path / ROOT_CA.lstrip("/"))
        for config in _PIP_CONFIG:
            if config.is_dir():
                shutil.copytree(config, etc / config.relative_to("/etc"), dirs_exist_ok=True)
            elif config.is_file():
                shutil.copyfile(config, etc / config.relative_to("/etc"))
        # As on an installed system: security updates and point releases.
        (etc / "apt/sources.list").write_text(
            f"deb {MIRROR} {SUITE} main\n"
            f"deb {MIRROR} {SUITE}-updates main\n"
            f"deb {MIRROR.removesuffix('/debian')}/debian-security {SUITE}-security main\n")
        # Package scripts start no services (there is no init system in here).
        policy = self.path / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)

    def environment(self) -> dict[str, str]:
        """A login-like environment with the host's registry settings."""
        env = {"HOME": "/root", "PATH": PATH, "LANG": "C.UTF-8", "TERM": "dumb",
               "USER": "root", "LOGNAME": "root", "DEBIAN_FRONTEND": "noninteractive",
               # The root shares the host's kernel: Nix kills every process of a build
               # user when a build ends, so the host's Nix and the root's must not share
               # build uids, or each kills the other's builds.
               "SETUP_NIX_FIRST_UID": str(ROOT_BUILD_UID), "SETUP_NIX_GID": str(ROOT_BUILD_GID)}
        env |= {k: v for k, v in os.environ.items() if k.startswith("PIP_")}
        if (self.path / ROOT_CA.lstrip("/")).exists():
            env |= dict.fromkeys(_CA_VARIABLES, ROOT_CA)
        return env

    def copy_in(self, repo: Path, dest: str) -> None:
        """The repository's files as a clone would have them (tracked and new, not ignored)."""
        target = self.path / dest.lstrip("/")
        target.mkdir(parents=True)
        files = subprocess.run(
            ["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others",
             "--exclude-standard"], capture_output=True, check=True).stdout
        listed = [f for f in files.decode().split("\0") if f and (repo / f).exists()]
        pack = subprocess.Popen(["tar", "-C", str(repo), "--null", "-T", "-", "-cf", "-"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        unpack = subprocess.Popen(["tar", "-C", str(target), "-xf", "-"], stdin=pack.stdout)
        assert pack.stdin is not None and pack.stdout is not None
        pack.stdout.close()
        pack.stdin.write("\0".join(listed).encode())
        pack.stdin.close()
        if pack.wait() != 0 or unpack.wait() != 0:
            raise RuntimeError(f"copying {repo} into the root failed")

    def enter(self) -> None:
        """Start the namespace holder (see the module docstring)."""
        self._holder = subprocess.Popen(
            ["unshare", "--mount", "--pid", "--fork", "--propagation", "private",
             "bash", "-c", _HOLDER, "holder", str(self.path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self._holder.stdout is not None
        if self._holder.stdout.readline().strip() != b"ready":
            assert self._holder.stderr is not None
            raise RuntimeError(
                f"entering the root failed: {self._holder.stderr.read().decode()}")
        children = Path(f"/proc/{self._holder.pid}/task/{self._holder.pid}/children")
        self.pid = int(children.read_text().split()[0])

    def argv(self, script: str) -> list[str]:
        env = [f"{k}={v}" for k, v in self.environment().items()]
        return ["nsenter", "--target", str(self.pid), "--mount", "--pid", "--",
                "/usr/bin/env", "-i", *env, "/bin/bash", "-euo", "pipefail", "-c", script]

    def run(self, script: str, timeout: float, env: Mapping[str, str] | None = None) -> Result:
        """A bash script as root inside the root; its exit status and output."""
        prelude = "".join(f"export {k}={_quote(v)}\n" for k, v in (env or {}).items())
        done = subprocess.run(self.argv(prelude + script), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=timeout, check=False)
        return Result(done.returncode, done.stdout.decode(errors="replace"))

    def spawn(self, script: str, log: Path,
              env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        """A long-running script inside the root (it ends with the root)."""
        prelude = "".join(f"export {k}={_quote(v)}\n" for k, v in (env or {}).items())
        with log.open("ab") as out:
            process = subprocess.Popen(self.argv(prelude + script), stdout=out,
                                       stderr=subprocess.STDOUT)
        self._spawned.append(process)
        return process

    def close(self) -> None:
        """End every process inside (PID 1 first: the kernel kills the rest)."""
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        for process in [*self._spawned, *filter(None, [self._holder])]:
            process.wait(30)
            for pipe in (process.stdout, process.stderr):
                if pipe is not None:
                    pipe.close()
        self.pid = 0
        # The namespace's last process may take a moment to go; its mounts go with it.
        time.sleep(0.1)


def _quote(value: str) -> str:
    return "'" + value.replace("'", "'\"'\"'") + "'"


@contextlib.contextmanager
def pristine_root(path: Path, log: Path) -> Iterator[PristineRoot]:
    root = PristineRoot(path)
    try:
        root.bootstrap(log)
        root.enter()
        yield root
    finally:
        root.close()


def main(argv: list[str]) -> int:
    """``python3 -m tests.pristine.root [--keep DIR] -- COMMAND...``: run COMMAND (as bash)
    in a checkout of this repository inside a fresh root, e.g. ``scripts/test``; its exit
    status is this one's. Needs only Python's standard library, debootstrap and root."""
    import argparse
    import sys
    import tempfile

    parser = argparse.ArgumentParser(prog="python3 -m tests.pristine.root")
    parser.add_argument("--dir", type=Path, help="make the root here and keep it")
    parser.add_argument("command", nargs="+", help="a bash command run in the checkout")
    args = parser.parse_args(argv)
    repo = Path(__file__).resolve().parents[2]
    base = args.dir or Path(tempfile.mkdtemp(prefix="nixfarm-pristine-", dir="/var/tmp"))
    base.mkdir(parents=True, exist_ok=True)
    print(f"pristine root: {base}/root (debootstrap log: {base}/debootstrap.log)", flush=True)
    try:
        with pristine_root(base / "root", base / "debootstrap.log") as root:
            root.copy_in(repo, "/root/nixfarm")
            done = subprocess.run(root.argv("cd /root/nixfarm\n" + " ".join(args.command)),
                                  stdout=sys.stdout, stderr=sys.stderr, check=False)
            return done.returncode
    finally:
        if args.dir is None:
            subprocess.run(["rm", "-rf", "--one-file-system", str(base)], check=False)


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
