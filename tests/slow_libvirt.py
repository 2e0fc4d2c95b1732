"""libvirtds that fail at one thing, made by relaying a real libvirtd's RPC connections and meddling with one
kind of packet while passing everything else at once.

- `LibvirtRelay` stands in front of a host's libvirtd socket and holds each domain start (``DOMAIN_CREATE``),
  or another kind of call, for a while. A node daemon given the relay's socket sees a libvirtd that answers
  every question but takes longer than the node's deadline to start a guest, which then starts anyway: the
  fault a timeout must never turn into "not running". Held shutdowns are a guest that stops only after the
  node gave up waiting for libvirt.
- `MigrationRelay` stands in front of a host's libvirtd TCP port, where peers' libvirtds connect for
  peer-to-peer live migration, and holds the target's answer to ``MIGRATE_FINISH3``: the target has resumed
  the guest, and the source does not know yet. Killing the source's libvirtd then is the fault that leaves a
  migration's outcome unknown to the node that asked for it.

libvirt's RPC framing (src/rpc/virnetprotocol.x): a 4-byte big-endian length of the whole packet, then the
header's program, version and procedure numbers; an answer carries its call's procedure number.
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
DOMAIN_SHUTDOWN_PROCEDURES = {33, 258}
"""REMOTE_PROC_DOMAIN_SHUTDOWN and REMOTE_PROC_DOMAIN_SHUTDOWN_FLAGS."""
DOMAIN_SUSPEND_PROCEDURES = {34}
"""REMOTE_PROC_DOMAIN_SUSPEND."""
MIGRATE_FINISH_PROCEDURES = {217, 306}
"""REMOTE_PROC_DOMAIN_MIGRATE_FINISH3 and REMOTE_PROC_DOMAIN_MIGRATE_FINISH3_PARAMS."""
PER_DOMAIN_QUERIES = {16, 23, 150, 212, 265}
"""What a caller asks about one domain at a time: REMOTE_PROC_DOMAIN_GET_INFO, _LOOKUP_BY_NAME, _IS_ACTIVE,
_GET_STATE and _GET_METADATA."""


class _Relay:
    """Accepts connections on `listener` and relays each to a new connection to the upstream, packet by packet,
    through `_to_upstream` and `_to_client` (True: pass the packet on)."""

    def __init__(self, listener: socket.socket):
        self._listener = listener
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.procedures: list[int] = []
        """Every remote procedure called through the relay, in order."""
        threading.Thread(target=self._accept, daemon=True).start()

    def _connect_upstream(self) -> socket.socket:
        raise NotImplementedError

    def _to_upstream(self, packet: bytes) -> bool:
        return True

    def _to_client(self, packet: bytes) -> bool:
        return True

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                _close(sock)

    def _accept(self) -> None:
        while True:
            try:
                client, _address = self._listener.accept()
            except OSError:
                return
            server = self._connect_upstream()
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, self._to_upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, self._to_client), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, passes) -> None:
        try:
            while (packet := _read_packet(source)) is not None:
                if not passes(packet):
                    break
                sink.sendall(packet)
        except OSError:
            pass
        _close(sink)
        _close(source)


class LibvirtRelay(_Relay):
    """Relays `upstream` (a libvirtd socket) at `socket_path`; `hold(seconds)` delays the next calls of the
    `held` procedures (domain starts unless told otherwise)."""

    def __init__(self, upstream: Path, held: set[int] = DOMAIN_CREATE_PROCEDURES):
        self._upstream = str(upstream)
        self._held_procedures = held
        self.directory = Path(tempfile.mkdtemp(prefix="slow-libvirt-"))
        self.socket_path = self.directory / "sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.socket_path))
        listener.listen(16)
        self._delay = 0.0
        self.held: list[tuple[float, float]] = []
        """(when a held call arrived, when it was passed on), epoch seconds."""
        super().__init__(listener)

    def uri(self, driver: str = "test", path: str = "/default") -> str:
        return f"{driver}+unix://{path}?socket={self.socket_path}"

    def hold(self, seconds: float) -> None:
        self._delay = seconds

    def close(self) -> None:
        super().close()
        self.socket_path.unlink(missing_ok=True)
        self.directory.rmdir()

    def _connect_upstream(self) -> socket.socket:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.connect(self._upstream)
        return server

    def _to_upstream(self, packet: bytes) -> bool:
        self.procedures.append(_procedure(packet))
        if _procedure(packet) in self._held_procedures and self._delay:
            arrived = time.time()
            time.sleep(self._delay)
            self.held.append((arrived, time.time()))
        return True


class MigrationRelay(_Relay):
    """Relays a libvirtd's TCP port (`upstream_port` on 127.0.0.1) at `port`; `hold_next_finish()` keeps the
    next answer to a migration's Finish step from the source (`finish_held` is set once it has one) until
    `close()`, and then drops it."""

    def __init__(self, upstream_port: int):
        self._upstream_port = upstream_port
        listener = socket.create_server(("127.0.0.1", 0))
        self.port = listener.getsockname()[1]
        self._holding = False
        self.finish_held = threading.Event()
        self._closed = threading.Event()
        super().__init__(listener)

    def close(self) -> None:
        self._closed.set()
        super().close()

    def uri(self) -> str:
        return f"qemu+tcp://127.0.0.1:{self.port}/system"

    def hold_next_finish(self) -> None:
        self._holding = True

    def _connect_upstream(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self._upstream_port))

    def _to_upstream(self, packet: bytes) -> bool:
        self.procedures.append(_procedure(packet))
        return True

    def _to_client(self, packet: bytes) -> bool:
        if self._holding and _procedure(packet) in MIGRATE_FINISH_PROCEDURES:
            self._holding = False
            self.finish_held.set()
            self._closed.wait()
            return False
        return True


def _read_packet(sock: socket.socket) -> bytes | None:
    """One whole RPC packet, its length included; None at the end of the stream."""
    length_bytes = _read_exactly(sock, 4)
    if length_bytes is None:
        return None
    body = _read_exactly(sock, struct.unpack(">I", length_bytes)[0] - 4)
    return None if body is None else length_bytes + body


def _procedure(packet: bytes) -> int | None:
    """The remote procedure a call or its answer is about (None: another RPC program's packet)."""
    program, _version, procedure = struct.unpack(">III", packet[4:16])
    return procedure if program == REMOTE_PROGRAM else None


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
    sock.close()
