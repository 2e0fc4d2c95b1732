"""A read-only NBD export of a staging file that is still being written, so qemu-img can work on an upload
while it arrives.

qemu-img cannot read a pipe or a socket: it seeks. Staging the whole upload first and converting afterwards
costs the two one after the other. Served over NBD (on a Unix socket only this node's qemu-img can reach),
the staging file looks complete to qemu-img from the start; a read of bytes that have not arrived yet waits
for them, and fails (EIO) if the upload breaks off. qemu-img reads most images front to back, as they arrive,
so conversion overlaps the transfer; an image whose tables sit at its end (a stream-optimized VMDK) simply
waits for them.

qemu rounds an NBD export's size up to a whole 512-byte sector and reads that far, so the export is
advertised that long: the padding reads as zeros, once the file is complete, as past the end of a local file.

Only what qemu-img needs of the protocol is spoken: fixed-newstyle negotiation (NBD_OPT_GO, _INFO and
_EXPORT_NAME; every other option is declined), then READ and DISC.
"""
import logging
import os
import socket
import struct
import threading
from pathlib import Path

log = logging.getLogger(__name__)

INIT_MAGIC, OPTION_MAGIC, REPLY_MAGIC = b"NBDMAGIC", 0x49484156454F5054, 0x3E889045565A9
REQUEST_MAGIC, SIMPLE_REPLY_MAGIC = 0x25609513, 0x67446698
FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES = 1, 2
OPT_EXPORT_NAME, OPT_ABORT, OPT_INFO, OPT_GO = 1, 2, 6, 7
REP_ACK, REP_INFO, REP_ERR_UNSUP = 1, 3, (1 << 31) + 1
INFO_EXPORT = 0
TRANSMISSION_FLAGS = 1 | 2  # HAS_FLAGS | READ_ONLY
CMD_READ, CMD_DISC = 0, 2
EIO, EINVAL = 5, 22
MAX_READ_BYTES = 32 << 20
SECTOR_BYTES = 512


class GrowingFileExport:
    """Serves `path`, of final size `size_bytes`, at `socket_path` while `advance` reports what is written.

    A Unix socket's path may not exceed 107 bytes, which a staging directory's path alone may, so the socket is
    made through a descriptor of its directory, and `url` names it relative to that `directory`: qemu-img runs
    there."""

    def __init__(self, path: Path, size_bytes: int, socket_path: Path):
        self.path = path
        self.size = size_bytes
        self.export_size = -(-size_bytes // SECTOR_BYTES) * SECTOR_BYTES
        self.socket_path = socket_path
        self.directory = socket_path.parent
        self._written = 0
        self._failed = False
        self._refused = False
        self.settled = threading.Event()
        """Set once the file is complete or has failed: from then on no read waits."""
        self._condition = threading.Condition()
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            directory = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                self._server.bind(f"/proc/self/fd/{directory}/{socket_path.name}")
            finally:
                os.close(directory)
            self._server.listen(4)
            self._descriptor = os.open(path, os.O_RDONLY)
        except BaseException:
            self._server.close()
            socket_path.unlink(missing_ok=True)
            raise

    @property
    def url(self) -> str:
        return f"nbd+unix:///?socket={self.socket_path.name}"

    def start(self) -> None:
        threading.Thread(target=self._accept_loop, name="staging-nbd", daemon=True).start()

    def advance(self, written_bytes: int) -> None:
        with self._condition:
            self._written = written_bytes
            self._condition.notify_all()
        if written_bytes >= self.size:
            self.settled.set()

    def fail(self) -> None:
        """The upload broke off: every read still waiting, and every later one past what arrived, fails."""
        with self._condition:
            self._failed = True
            self._condition.notify_all()
        self.settled.set()

    def refuse(self) -> None:
        """Fail every read from now on, even of what has arrived: qemu-img stops on the error and closes its
        target properly (killed, it would leave a Ceph image watched, and unremovable, for 30 s)."""
        with self._condition:
            self._refused = True
        self.fail()

    def close(self) -> None:
        self.fail()
        stop_listening(self._server)
        os.close(self._descriptor)
        self.socket_path.unlink(missing_ok=True)

    def _accept_loop(self) -> None:
        while True:
            try:
                connection, _peer = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(connection,), name="staging-nbd-client",
                             daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        with connection:
            try:
                if self._negotiate(connection):
                    self._transmit(connection)
            except (OSError, ConnectionError, struct.error) as error:
                log.debug("staging export connection ended: %s", error)

    def _negotiate(self, connection: socket.socket) -> bool:
        connection.sendall(INIT_MAGIC + struct.pack(">QH", OPTION_MAGIC, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))
        client_flags, = struct.unpack(">I", _receive(connection, 4))
        while True:
            magic, option, length = struct.unpack(">QII", _receive(connection, 16))
            _receive(connection, length)
            if magic != OPTION_MAGIC:
                return False
            if option == OPT_EXPORT_NAME:
                zeroes = b"" if client_flags & FLAG_NO_ZEROES else bytes(124)
                connection.sendall(struct.pack(">QH", self.export_size, TRANSMISSION_FLAGS) + zeroes)
                return True
            if option in (OPT_INFO, OPT_GO):
                info = struct.pack(">HQH", INFO_EXPORT, self.export_size, TRANSMISSION_FLAGS)
                connection.sendall(_option_reply(option, REP_INFO, info) + _option_reply(option, REP_ACK))
                if option == OPT_GO:
                    return True
            elif option == OPT_ABORT:
                connection.sendall(_option_reply(option, REP_ACK))
                return False
            else:
                connection.sendall(_option_reply(option, REP_ERR_UNSUP))

    def _transmit(self, connection: socket.socket) -> None:
        while True:
            magic, _flags, command, handle, offset, length = struct.unpack(">IHHQQI", _receive(connection, 28))
            if magic != REQUEST_MAGIC or command == CMD_DISC:
                return
            if command != CMD_READ or length > MAX_READ_BYTES or offset + length > self.export_size:
                connection.sendall(struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, EINVAL, handle))
                continue
            if not self._wait_for(min(offset + length, self.size)):
                connection.sendall(struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, EIO, handle))
                continue
            connection.sendall(struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, 0, handle))
            self._send_range(connection, offset, length)

    def _send_range(self, connection: socket.socket, offset: int, length: int) -> None:
        """The file's bytes from `offset`, by sendfile(2) (no copy through Python), then the padding's zeros."""
        position, end = offset, min(offset + length, self.size)
        while position < end:
            sent = os.sendfile(connection.fileno(), self._descriptor, position, end - position)
            if not sent:
                raise ConnectionError("the staging file is shorter than the upload")
            position += sent
        if offset + length > position:
            connection.sendall(bytes(offset + length - position))

    def _wait_for(self, end: int) -> bool:
        with self._condition:
            while self._written < end and not self._failed:
                self._condition.wait()
            return self._written >= end and not self._refused


def stop_listening(server: socket.socket) -> None:
    """Close a listening socket, waking the thread blocked accepting on it (close alone does not, on Linux)."""
    try:
        server.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    server.close()


def _option_reply(option: int, reply_type: int, payload: bytes = b"") -> bytes:
    return struct.pack(">QIII", REPLY_MAGIC, option, reply_type, len(payload)) + payload


def _receive(connection: socket.socket, length: int) -> bytes:
    data = bytearray()
    while len(data) < length:
        chunk = connection.recv(length - len(data))
        if not chunk:
            raise ConnectionError("peer closed the connection")
        data += chunk
    return bytes(data)
