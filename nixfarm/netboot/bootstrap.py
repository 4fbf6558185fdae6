"""The builder's bootstrap: runs in the netboot image after ``guest/init`` (stage 2).

1. The user data: JSON ``{"server": URL, "enroll_token": "nfe_..."}`` and nothing
   else (``nixfarm.builders.base.user_data``), from where the kernel command line's
   ``nixfarm.userdata=`` says: ``fwcfg`` (qemu's firmware configuration,
   ``opt/nixfarm/user-data``: the local provider) or an ``http://`` URL (a cloud's
   metadata service, such as Vultr's ``http://169.254.169.254/latest/user-data``).
2. Enrollment: the one-time token is traded for the builder's own runner token
   (``POST /api/v1/builders/enroll``); the token is never written to disk.
   On the local provider (``nixfarm.loopback=10.0.2.2``) the farm's URL names the
   host's loopback: the guest's 127.0.0.1 port of it is forwarded to the host first.
3. The console shipper, a thread: everything the machine printed since the kernel
   started (``/run/nixfarm/console.log``, which init fills) goes to the farm as
   numbered chunks (``PUT /api/v1/builders/<id>/console/<seq>``), every half
   second, for the builder's page; what it printed before enrollment first.
4. The runner (``nixfarm runner``, bubblewrap sandboxes, its own nix-daemons) with
   that token, in the foreground; its output is on the console and so shipped too.

Only the standard library: under TCG every imported module costs time.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

CONSOLE = Path("/run/nixfarm/console.log")
FW_CFG = Path("/sys/firmware/qemu_fw_cfg/by_name/opt/nixfarm/user-data/raw")
CMDLINE = Path("/proc/cmdline")
NIX_OPTIONS = Path("/etc/nixfarm/nix-options.json")
NIX_SOURCE = Path("/usr/lib/nixfarm/nix-source")
WORK_DIR = Path("/var/lib/nixfarm-runner")
#: Bytes of console per chunk at most.
CHUNK = 256 * 1024
#: Seconds between two looks at the console log.
SHIP_EVERY = 0.5


def say(text: str) -> None:
    print(f"nixfarm-bootstrap: {text}", flush=True)


def parameters(cmdline: str) -> dict[str, str]:
    """``nixfarm.KEY=VALUE`` words of a kernel command line."""
    found: dict[str, str] = {}
    for word in cmdline.split():
        key, equals, value = word.partition("=")
        if equals and key.startswith("nixfarm."):
            found[key.removeprefix("nixfarm.")] = value
    return found


def read_user_data(where: str, attempts: int = 30) -> dict[str, Any]:
    """The user data from ``where`` (``fwcfg`` or a URL), checked to be what we expect."""
    raw = b""
    for attempt in range(attempts):
        try:
            if where == "fwcfg":
                raw = FW_CFG.read_bytes()
            elif where.startswith(("http://", "https://")):
                with urllib.request.urlopen(where, timeout=10) as answer:
                    raw = answer.read()
            else:
                raise SystemExit(f"nixfarm.userdata={where!r}: expected fwcfg or a URL")
            break
        except OSError as e:
            if attempt == attempts - 1:
                raise SystemExit(f"cannot read the user data from {where}: {e}") from None
            time.sleep(1)
    data = json.loads(raw)
    if not isinstance(data, dict) or not isinstance(data.get("server"), str) \
            or not isinstance(data.get("enroll_token"), str):
        raise SystemExit("the user data is not {\"server\": URL, \"enroll_token\": TOKEN}")
    return data


def request(method: str, url: str, body: bytes | None, token: str | None = None,
            content_type: str = "application/json", timeout: float = 30) -> bytes:
    headers = {"Content-Type": content_type, "User-Agent": "nixfarm-builder"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    call = urllib.request.Request(url, data=body, headers=headers, method=method)
    with urllib.request.urlopen(call, timeout=timeout) as answer:
        data: bytes = answer.read()
        return data


def enroll(server: str, enroll_token: str, attempts: int = 20) -> dict[str, Any]:
    """Trade the enrollment token for the builder's runner token (tried again while the
    server cannot be reached; a refusal is final)."""
    body = json.dumps({"token": enroll_token}).encode()
    for attempt in range(attempts):
        try:
            answer = json.loads(request("POST", f"{server}/api/v1/builders/enroll", body))
            if not isinstance(answer, dict):
                raise SystemExit("enrollment: the server's answer is not an object")
            return answer
        except urllib.error.HTTPError as e:
            detail = e.read()[:500].decode(errors="replace")
            raise SystemExit(f"enrollment refused ({e.code}): {detail}") from None
        except OSError as e:
            if attempt == attempts - 1:
                raise SystemExit(f"cannot reach {server} to enroll: {e}") from None
            say(f"cannot reach {server} yet ({e}); trying again")
            time.sleep(min(2.0 * (attempt + 1), 10.0))
    raise SystemExit("enrollment failed")


def _pipe(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def forward_loopback(port: int, host: str) -> socket.socket:
    """Connections to 127.0.0.1:``port`` here go to ``host``:``port`` (the farm on the
    local provider's host, whose URL names its loopback), in daemon threads."""
    listener = socket.create_server(("127.0.0.1", port), backlog=64)

    def serve() -> None:
        while True:
            client, _ = listener.accept()
            try:
                upstream = socket.create_connection((host, port), timeout=30)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

    threading.Thread(target=serve, name="loopback-forward", daemon=True).start()
    return listener


class Shipper(threading.Thread):
    """Sends the console log's new bytes to the farm as numbered chunks."""

    def __init__(self, url: str, token: str, path: Path = CONSOLE) -> None:
        super().__init__(name="console-shipper", daemon=True)
        self.url = url
        self.token = token
        self.path = path
        self.seq = 0
        self.offset = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while True:
            stopping = self.stopping.wait(SHIP_EVERY)
            self.ship()
            if stopping:
                return

    def ship(self) -> None:
        try:
            with self.path.open("rb") as log:
                log.seek(self.offset)
                while data := log.read(CHUNK):
                    request("PUT", f"{self.url}/{self.seq}", data, self.token,
                            "application/octet-stream")
                    self.seq += 1
                    self.offset += len(data)
        except (OSError, urllib.error.HTTPError):
            pass  # the next round sends it (chunks are numbered: no duplicates)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)


def main() -> int:
    cmdline = parameters(CMDLINE.read_text())
    user_data = read_user_data(cmdline.get("userdata", "fwcfg"))
    server = str(user_data["server"]).rstrip("/")
    where = urlsplit(server)
    if cmdline.get("loopback") and where.hostname in ("127.0.0.1", "localhost"):
        port = where.port or (443 if where.scheme == "https" else 80)
        forward_loopback(port, cmdline["loopback"])
        say(f"127.0.0.1:{port} is forwarded to the farm at {cmdline['loopback']}:{port}")
    say(f"enrolling with {server}")
    started = time.monotonic()
    answer = enroll(server, str(user_data["enroll_token"]))
    del user_data  # the one-time token is spent: keep nothing of it
    token = str(answer["runner_token"])
    builder = answer.get("builder_id")
    name = str(answer.get("name") or f"builder-{builder}")
    say(f"enrolled as {name} in {time.monotonic() - started:.1f} s")
    shipper = Shipper(f"{server}/api/v1/builders/{builder}/console", token)
    shipper.start()
    options = json.loads(NIX_OPTIONS.read_text()) if NIX_OPTIONS.exists() else {}
    argv = [sys.executable, "-c", "from nixfarm.cli.main import main; main()", "runner",
            "--url", server,
            "--name", name, "--work-dir", str(WORK_DIR), "--sandbox", "bwrap"]
    for key, value in options.items():
        argv += ["--nix-option", f"{key}={value}"]
    if NIX_SOURCE.is_dir():
        argv += ["--nix-source", str(NIX_SOURCE)]
    say("starting the runner")
    env = {**os.environ, "NIXFARM_RUNNER_TOKEN": token}
    try:
        status = subprocess.run(argv, env=env, check=False).returncode
    finally:
        say("the runner stopped")
        shipper.stop()
    return status


if __name__ == "__main__":
    sys.exit(main())
