"""An upload's bytes arriving at the node, checked against the checksum announced for them (`pvc.bulk`).

The first bytes (`receive_head`) say the image's format, and with it how the rest arrives:

* `VerifiedStream` hands them to Python in pieces, for an importer that writes them itself (raw data going
  straight into a volume);
* `StagedReceive` moves them into a staging file without passing them through Python: splice(2) takes them
  from the socket through a pipe into the file inside the kernel, and each piece is hashed from a mapping of
  the file. On a two-core node, copying an image through Python buffers (and their threads' turns at the
  interpreter) cost more than the conversion itself. Over TLS they must be decrypted, so there they are
  received into a buffer and written from it.

Either way each `bulk.PIECE_BYTES` piece is hashed in a small pool while the next arrives (`PieceHashes`), and
the verdict on the whole stream, short or with another checksum, comes at its end.
"""
import mmap
import os
import queue
import select
import socket
import ssl
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterator

from pvc import bulk, pipes
from pvc.errors import InvalidInput

HEAD_BYTES = 64 << 10
QUEUED_PIECES = 4
MOVE_BYTES = 1 << 20
POLL_INTERVAL_S = 0.5


def receive_head(connection: socket.socket, size_bytes: int) -> bytes:
    """The stream's first bytes (all of a small one), enough for `pvc.qemu_img.resolve_format`."""
    head = bytearray(min(HEAD_BYTES, size_bytes))
    with memoryview(head) as view:
        received = receive_into(connection, view, None, connection.gettimeout())
    if received < len(head):
        raise _short(size_bytes - received)
    return bytes(head)


def put_unless_stopped(pieces: queue.Queue, item: object, stopping: threading.Event) -> None:
    """Queue an item for a consumer, unless it has stopped listening (a full queue then never blocks the
    receiving thread for good)."""
    while not stopping.is_set():
        try:
            pieces.put(item, timeout=POLL_INTERVAL_S)
            return
        except queue.Full:
            continue


def receive_into(connection: socket.socket, view: memoryview, stopping: threading.Event | None,
                  idle_limit_s: float | None) -> int:
    """Receive into `view` until it is full or the peer closes the connection; how many bytes came. Waits in
    `POLL_INTERVAL_S` steps, so that `stopping` is heard within one: an error then, as when no byte has come
    for `idle_limit_s`."""
    timeout = connection.gettimeout()
    connection.settimeout(POLL_INTERVAL_S)
    try:
        received, idle_s = 0, 0.0
        while received < len(view):
            if stopping is not None and stopping.is_set():
                raise _abandoned()
            try:
                arrived = connection.recv_into(view[received:])
            except socket.timeout:
                idle_s += POLL_INTERVAL_S
                if idle_limit_s is not None and idle_s >= idle_limit_s:
                    raise _stalled() from None
                continue
            if not arrived:
                break
            received, idle_s = received + arrived, 0.0
        return received
    finally:
        connection.settimeout(timeout)


def _pwrite_all(descriptor: int, data: bytes | memoryview, offset: int) -> None:
    with memoryview(data) as view:
        written = 0
        while written < len(view):
            written += os.pwrite(descriptor, view[written:], offset + written)


def _stalled() -> InvalidInput:
    return InvalidInput("the upload stalled; nothing was imported")


def _abandoned() -> InvalidInput:
    return InvalidInput("the upload was abandoned")


def _short(missing: int) -> InvalidInput:
    return InvalidInput(f"the upload ended {missing} bytes short of its announced size; nothing was imported")


class PieceHashes:
    """The pieces' digests, computed in a small pool (hashlib lets go of the interpreter while it hashes)."""

    def __init__(self, checksum: str):
        self._expected = checksum
        self._pool = ThreadPoolExecutor(bulk.HASH_THREADS, thread_name_prefix="upload-hash")
        self._digests: list[Future] = []

    def add(self, piece: bytes | bytearray | memoryview) -> None:
        self._digests.append(self._pool.submit(bulk.piece_digest, piece))

    def verify(self) -> None:
        if bulk.combine_digests([digest.result() for digest in self._digests]) != self._expected:
            raise InvalidInput("the upload's checksum does not match the one announced; nothing was imported")

    def close(self, wait: bool = False) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=True)


class VerifiedStream:
    """The announced number of bytes, `head` first, as pieces for the consumer to iterate over.

    A thread receives each piece and has it hashed while the consumer writes the previous ones, so receiving,
    hashing and writing overlap. The last step of the iteration raises `InvalidInput` if the stream ended short
    or its checksum differs, so a consumer that reaches the end without an error has exactly what was announced.
    """

    def __init__(self, connection: socket.socket, size_bytes: int, checksum: str, head: bytes):
        self._connection = connection
        self._size = size_bytes
        self._head = head
        self._hashes = PieceHashes(checksum)
        self._pieces: queue.Queue = queue.Queue(maxsize=QUEUED_PIECES)
        self._stopping = threading.Event()
        self._idle_limit_s = connection.gettimeout()
        self._receiver = threading.Thread(target=self._receive, name="upload-receive", daemon=True)

    def __iter__(self) -> Iterator[bytearray]:
        self._receiver.start()
        while (item := self._next_item()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
        self._hashes.verify()

    def close(self) -> None:
        """Stop receiving: the consumer's iteration ends with an error, and this returns once the receiving
        thread has let go of the connection (a TLS connection must not be used by two threads at once)."""
        self._stopping.set()
        if self._receiver.ident is not None:
            self._receiver.join()
        self._hashes.close()

    def _next_item(self) -> object:
        while not self._stopping.is_set():
            try:
                return self._pieces.get(timeout=POLL_INTERVAL_S)
            except queue.Empty:
                continue
        return _abandoned()

    def _receive(self) -> None:
        try:
            remaining, head = self._size, self._head
            while remaining:
                piece = bytearray(min(bulk.PIECE_BYTES, remaining))
                piece[:len(head)] = head
                with memoryview(piece) as view:
                    received = len(head) + receive_into(self._connection, view[len(head):], self._stopping,
                                                         self._idle_limit_s)
                if received < len(piece):
                    raise _short(remaining - received)
                remaining -= len(piece)
                head = b""
                self._hashes.add(piece)
                self._put(piece)
            self._put(None)
        except BaseException as error:
            self._put(error)

    def _put(self, item: object) -> None:
        put_unless_stopped(self._pieces, item, self._stopping)


class StagedReceive(threading.Thread):
    """Receives the stream, `head` first, into the staging file at `path`, calling `advance` with how much of it
    has landed (and `fail` if it breaks off), then checks it. `error` holds why it failed, if it did.

    The connection's timeout is its idle limit: no byte for that long, and the upload has stalled."""

    def __init__(self, connection: socket.socket, head: bytes, path: str, size_bytes: int, checksum: str,
                 advance: Callable[[int], None], fail: Callable[[], None]):
        super().__init__(name="upload-staging", daemon=True)
        self._connection = connection
        self._head = head
        self._path = path
        self._size = size_bytes
        self._hashes = PieceHashes(checksum)
        self._advance = advance
        self._fail = fail
        self._idle_limit_s = connection.gettimeout()
        self._stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._receive()
        except BaseException as error:
            self.error = error
            self._fail()

    def stop(self) -> None:
        """Give up on the stream (the import failed already); returns once no byte is being received."""
        self._stopping.set()
        if self.ident is not None:
            self.join()

    def raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error

    def _receive(self) -> None:
        """Into the file, then checked."""
        descriptor = os.open(self._path, os.O_RDWR)
        mapping = None
        try:
            os.ftruncate(descriptor, self._size)
            mapping = mmap.mmap(descriptor, self._size, prot=mmap.PROT_READ)
            _pwrite_all(descriptor, self._head, 0)
            written = len(self._head)
            hashed = self._hash_pieces(mapping, 0, written)
            self._advance(written)
            with self._mover(descriptor) as move:
                while written < self._size:
                    landed = move(written, min(MOVE_BYTES, self._size - written))
                    if not landed:
                        raise _short(self._size - written)
                    written += landed
                    hashed = self._hash_pieces(mapping, hashed, written)
                    self._advance(written)
            self._hashes.verify()
        finally:
            self._hashes.close(wait=True)
            if mapping is not None:
                mapping.close()
            os.close(descriptor)

    @contextmanager
    def _mover(self, descriptor: int) -> Iterator[Callable[[int, int], int]]:
        """What moves up to a number of bytes from the connection into the file at an offset, returning how
        many landed (0: the peer has closed the connection): splice(2) through a pipe, inside the kernel; but
        what arrives over TLS must be decrypted, in Python's buffers."""
        if isinstance(self._connection, ssl.SSLSocket):
            buffer = bytearray(MOVE_BYTES)
            yield lambda offset, count: self._decrypt_into(descriptor, buffer, offset, count)
            return
        pipe_out, pipe_in = os.pipe()
        try:
            pipes.widen(pipe_in, MOVE_BYTES)
            yield lambda offset, count: self._splice_into(descriptor, pipe_out, pipe_in, offset, count)
        finally:
            os.close(pipe_out)
            os.close(pipe_in)

    def _splice_into(self, descriptor: int, pipe_out: int, pipe_in: int, offset: int, count: int) -> int:
        moved = self._splice_in(pipe_in, count)
        landed = 0
        while landed < moved:
            landed += os.splice(pipe_out, descriptor, moved - landed, offset_dst=offset + landed)
        return moved

    def _splice_in(self, pipe_in: int, count: int) -> int:
        """Move up to `count` bytes from the connection into the pipe as soon as some arrive; 0 when the peer
        has closed it. Waits as `_receive_into` does."""
        poller = select.poll()
        poller.register(self._connection, select.POLLIN)
        idle_s = 0.0
        while True:
            if self._stopping.is_set():
                raise _abandoned()
            if poller.poll(POLL_INTERVAL_S * 1000):
                try:
                    return os.splice(self._connection.fileno(), pipe_in, count,
                                     flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
                except BlockingIOError:
                    continue
            idle_s += POLL_INTERVAL_S
            if self._idle_limit_s is not None and idle_s >= self._idle_limit_s:
                raise _stalled()

    def _decrypt_into(self, descriptor: int, buffer: bytearray, offset: int, count: int) -> int:
        """Fill up to `count` bytes of `buffer` from the TLS connection (until it closes), then write them."""
        with memoryview(buffer) as view:
            received = receive_into(self._connection, view[:count], self._stopping, self._idle_limit_s)
            _pwrite_all(descriptor, view[:received], offset)
        return received

    def _hash_pieces(self, mapping: mmap.mmap, hashed: int, written: int) -> int:
        """Hash every whole piece written since `hashed` (and the last, short one at the end); the new mark."""
        while hashed < written and (written - hashed >= bulk.PIECE_BYTES or written == self._size):
            end = min(hashed + bulk.PIECE_BYTES, written)
            self._hashes.add(memoryview(mapping)[hashed:end])
            hashed = end
        return hashed


