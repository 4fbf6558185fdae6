"""The guest's Nix daemon socket, relayed to the host over one virtio-serial port.

Runs in the guest, as root, with the host's Python (``python3 -I -S``: the standard
library only), started by the agent when the VM has the ``nixfarm.nix`` port:

    nixrelay.py PORT SOCKET

It listens on SOCKET (/nix/var/nix/daemon-socket/socket, for every user) and carries
each connection made to it over PORT, multiplexed, in frames: a u32 connection
number, a u32 length, then that many bytes; length 0 closes that connection (either
way). On the host, ``nixfarm.runner.vm.nixguest.NixPort`` opens one connection to the
job's Nix proxy per connection number. ``nix-build`` opens several connections, and
several clients may run at once: nothing here waits on any one of them (every socket
is non-blocking, what cannot be written yet waits in a buffer).
"""

from __future__ import annotations

import os
import select
import socket
import struct
import sys
import time

HEADER = struct.Struct("<II")
FRAME = 65536


class Relay:
    def __init__(self, port: int, listener: socket.socket) -> None:
        self.port = port
        self.listener = listener
        self.clients: dict[int, socket.socket] = {}
        self.to_client: dict[int, bytearray] = {}
        self.closing: set[int] = set()  # the host closed them: closed once flushed
        self.to_host = bytearray()
        self.inbox = bytearray()
        self.next_id = 1

    def close(self, conn: int, tell_host: bool) -> None:
        sock = self.clients.pop(conn, None)
        self.to_client.pop(conn, None)
        self.closing.discard(conn)
        if sock is not None:
            sock.close()
            if tell_host:
                self.to_host += HEADER.pack(conn, 0)

    def from_host(self, data: bytes) -> None:
        self.inbox += data
        while len(self.inbox) >= HEADER.size:
            conn, size = HEADER.unpack_from(self.inbox)
            if len(self.inbox) < HEADER.size + size:
                return
            payload = bytes(self.inbox[HEADER.size:HEADER.size + size])
            del self.inbox[:HEADER.size + size]
            if conn not in self.clients:
                continue  # one the client closed already
            if size == 0:
                self.closing.add(conn)
                if not self.to_client[conn]:
                    self.close(conn, tell_host=False)
            else:
                self.to_client[conn] += payload

    def step(self) -> bool:
        """Wait for something to do and do it; False once the host is gone."""
        poller = select.poll()
        poller.register(self.listener, select.POLLIN)
        poller.register(self.port, select.POLLIN | (select.POLLOUT if self.to_host else 0))
        by_fd: dict[int, int] = {}
        for conn, sock in self.clients.items():
            by_fd[sock.fileno()] = conn
            # A client's requests wait while the host has not taken the last ones.
            events = select.POLLIN if len(self.to_host) < 16 * FRAME else 0
            if self.to_client[conn]:
                events |= select.POLLOUT
            poller.register(sock, events)
        for fd, events in poller.poll():
            if fd == self.listener.fileno():
                client, _ = self.listener.accept()
                client.setblocking(False)
                self.clients[self.next_id] = client
                self.to_client[self.next_id] = bytearray()
                self.next_id = self.next_id % 0xFFFFFFFF + 1
            elif fd == self.port:
                if events & select.POLLHUP and not events & select.POLLIN:
                    time.sleep(0.1)  # the host's end is not connected (yet, or any more)
                if events & select.POLLIN:
                    try:
                        data = os.read(self.port, FRAME)
                    except BlockingIOError:
                        data = b"-"
                    if not data:
                        return False
                    if data != b"-":
                        self.from_host(data)
                if events & select.POLLOUT and self.to_host:
                    try:  # noqa: SIM105 - no contextlib: every import is slow in the guest
                        del self.to_host[:os.write(self.port, self.to_host[:FRAME])]
                    except BlockingIOError:
                        pass
            elif fd in by_fd:
                self.client_ready(by_fd[fd], events)
        return True

    def client_ready(self, conn: int, events: int) -> None:
        sock = self.clients.get(conn)
        if sock is None:
            return
        if events & select.POLLOUT and self.to_client[conn]:
            try:
                del self.to_client[conn][:sock.send(self.to_client[conn])]
            except BlockingIOError:
                pass
            except OSError:
                self.close(conn, tell_host=True)
                return
            if conn in self.closing and not self.to_client[conn]:
                self.close(conn, tell_host=False)
                return
        if events & (select.POLLIN | select.POLLHUP | select.POLLERR):
            try:
                data = sock.recv(FRAME)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if data:
                self.to_host += HEADER.pack(conn, len(data)) + data
            else:
                self.close(conn, tell_host=True)


def main(port_path: str, socket_path: str) -> None:
    port = os.open(port_path, os.O_RDWR | os.O_NONBLOCK)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:  # noqa: SIM105
        os.unlink(socket_path)
    except FileNotFoundError:
        pass
    # Made under a temporary name and renamed: the socket appears ready to connect.
    partial = socket_path + ".new"
    listener.bind(partial)
    os.chmod(partial, 0o666)
    listener.listen(64)
    listener.setblocking(False)
    os.rename(partial, socket_path)
    relay = Relay(port, listener)
    while relay.step():
        pass


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
