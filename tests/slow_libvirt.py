"""A libvirtd that is slow at one thing: a unix-socket relay in front of a host's real libvirtd socket that holds
each domain start (libvirt's RPC call ``DOMAIN_CREATE``) for a while before passing it on, and passes
everything else at once. A node daemon given the relay's socket sees a libvirtd that answers every question
but takes longer than the node's deadline to start a guest, which then starts anyway: the fault a timeout must
never turn into "not running".

libvirt's RPC framing (src/rpc/virnetprotocol.x): a 4-byte big-endian length of the whole packet, then the
header's program, version and procedure numbers.
"""
from __future__ import annotations

import socket
import struct
import tempfile
import threading
import time
from pathlib import Path

REMOTE_PROGRAM = 0x20008086
DOMAIN_CREATE_PROCEDURES = {9, 196}
"""REMOTE_PROC_DOMAIN_CREATE and REMOTE_PROC_DOMAIN_CREATE_WITH_FLAGS (src/remote/remote_protocol.x)."""


class SlowStarts:
    """Relays `upstream` (a libvirtd socket) at `socket_path`; `hold(seconds)` delays the next domain starts."""

    def __init__(self, upstream: Path):
        self._upstream = str(upstream)
        self.directory = Path(tempfile.mkdtemp(prefix="slow-libvirt-"))
        self.socket_path = self.directory / "sock"
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.socket_path))
        self._listener.listen(16)
        self._delay = 0.0
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.held: list[tuple[float, float]] = []
        """(when a start arrived, when it was passed on), epoch seconds."""
        threading.Thread(target=self._accept, daemon=True).start()

    def uri(self, driver: str = "test", path: str = "/default") -> str:
        return f"{driver}+unix://{path}?socket={self.socket_path}"

    def hold(self, seconds: float) -> None:
        self._delay = seconds

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
        self.socket_path.unlink(missing_ok=True)
        self.directory.rmdir()

    def _accept(self) -> None:
        while True:
            try:
                client, _address = self._listener.accept()
            except OSError:
                return
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.connect(self._upstream)
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._to_server, args=(client, server), daemon=True).start()
            threading.Thread(target=self._to_client, args=(server, client), daemon=True).start()

    def _to_client(self, server: socket.socket, client: socket.socket) -> None:
        try:
            while data := server.recv(65536):
                client.sendall(data)
        except OSError:
            pass
        _close(client)

    def _to_server(self, client: socket.socket, server: socket.socket) -> None:
        try:
            while (length_bytes := _read_exactly(client, 4)) is not None:
                (length,) = struct.unpack(">I", length_bytes)
                body = _read_exactly(client, length - 4)
                if body is None:
                    break
                program, _version, procedure = struct.unpack(">III", body[:12])
                if program == REMOTE_PROGRAM and procedure in DOMAIN_CREATE_PROCEDURES and self._delay:
                    arrived = time.time()
                    time.sleep(self._delay)
                    self.held.append((arrived, time.time()))
                server.sendall(length_bytes + body)
        except OSError:
            pass
        _close(server)


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
