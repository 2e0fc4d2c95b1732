"""The bulk upload channel: image bytes go straight from the client to the node that writes the volume.

Control calls ride Pyro5 and serpent, which base64-encodes bytes (~75 MiB/s); images must move at disk speed,
so they take this TCP stream instead, under TLS when the cluster uses TLS (`server_context`, `client_context`:
the node's agent certificate, the client's CA). A coordinator first checks the request and has the node issue a
single-use token, valid for seconds and bound to one pool, volume, declared size and checksum (the client
computes the checksum first and declares it on the authenticated control call, so whoever sees the token cannot
spend it on other content). Then, on one connection:

    client -> node   {"token": ..., "size_bytes": N, "checksum": HEX}\\n   announced before any data
    node -> client   {"ready": true}\\n                                   or {"error": CLASS, "message": ...}
    client -> node   exactly N bytes                                     in the clear by sendfile(), no copy
    node -> client   {"volume": {...}}\\n                                 or {"error": CLASS, "message": ...}

The node refuses a stream whose token is unknown, used or expired, whose size or checksum differs from the
token's, or that ends short or with another checksum; then nothing is imported and nothing is left behind.

An appliance upload (an OVA) may instead announce its checksum last, so that the client hashes while it sends:
it declares a fresh secret key (`TRAILER_PREFIX` + 64 hex digits) on the control call in place of the
checksum, announces ``"checksum": "trailer"``, and after the N bytes sends ``{"checksum": HEX, "mac":
HMAC-SHA256(key, HEX)}``. The key never travels on this channel, so whoever sees the token still cannot spend it
on other content; the node checks the trailer before it settles anything (`trailer_mac`).

The checksum is SHA-256 over pieces: the SHA-256 of the concatenated SHA-256 digests of each `PIECE_BYTES`
piece of the data. Pieces hash in parallel on both ends, so announcing it first costs the client a fraction of
a plain SHA-256 pass, and the node checks it while the data streams in.
"""
import hashlib
import hmac
import json
import mmap
import os
import secrets
import select
import shutil
import socket
import ssl
import stat
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO, Callable

from pvc import errors, handshake

HEADER_LIMIT_BYTES = 4096
TRAILER_PREFIX = "trailer-hmac-sha256:"
"""A declared checksum of this form is the key of a checksum announced after the data (see above)."""
TRAILER = "trailer"
CHUNK_BYTES = 4 << 20
PIECE_BYTES = 16 << 20
HASH_THREADS = min(4, os.cpu_count() or 1)


def send_message(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(json.dumps(message).encode() + b"\n")


def read_message(reader: BinaryIO, what: str) -> dict[str, Any]:
    """One JSON line from `reader`; a connection closed early or a malformed line is an error naming `what`."""
    return _parse_message(reader.readline(HEADER_LIMIT_BYTES + 1), what)


def receive_message(sock: socket.socket, what: str, deadline: float) -> dict[str, Any]:
    """One JSON line from `sock`, complete by the monotonic `deadline`: an idle timeout per receive would let a
    peer trickling a byte at a time hold the connection for ever. It is read a byte at a time (a TLS socket
    cannot peek), so no byte past the line is taken from the socket."""
    line = bytearray()
    while not line.endswith(b"\n") and len(line) <= HEADER_LIMIT_BYTES:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise errors.InvalidInput(f"the {what} did not arrive in time")
        sock.settimeout(remaining)
        try:
            byte = sock.recv(1)
        except socket.timeout:
            raise errors.InvalidInput(f"the {what} did not arrive in time") from None
        if not byte:
            break
        line += byte
    return _parse_message(bytes(line), what)


def _parse_message(line: bytes, what: str) -> dict[str, Any]:
    if not line.endswith(b"\n"):
        raise errors.InvalidInput(f"the {what} was cut short or longer than {HEADER_LIMIT_BYTES} bytes")
    try:
        message = json.loads(line)
    except ValueError:
        raise errors.InvalidInput(f"the {what} is not JSON") from None
    if not isinstance(message, dict):
        raise errors.InvalidInput(f"the {what} is not a JSON object")
    return message


def error_message(error: BaseException) -> dict[str, Any]:
    name = type(error).__name__ if isinstance(error, errors.PVCError) else "OperationFailed"
    return {"error": name, "message": str(error)}


def raise_if_error(message: dict[str, Any]) -> dict[str, Any]:
    if "error" in message:
        error_type = getattr(errors, str(message["error"]), errors.PVCError)
        if not (isinstance(error_type, type) and issubclass(error_type, errors.PVCError)):
            error_type = errors.PVCError
        raise error_type(str(message.get("message", "the node refused the upload")))
    return message


def piece_digest(data: bytes | bytearray | memoryview) -> bytes:
    return hashlib.sha256(data).digest()


def combine_digests(digests: list[bytes]) -> str:
    """The announced checksum, from the digests of every piece in order."""
    return hashlib.sha256(b"".join(digests)).hexdigest()


def trailer_key() -> tuple[str, str]:
    """A fresh key for a checksum sent last: (what to declare on the control call, the key)."""
    key = secrets.token_hex(32)
    return f"{TRAILER_PREFIX}{key}", key


def trailer_mac(key: str, checksum: str) -> str:
    return hmac.new(bytes.fromhex(key), checksum.encode(), hashlib.sha256).hexdigest()


def checksum_of_bytes(data: bytes) -> str:
    return combine_digests([piece_digest(data[offset:offset + PIECE_BYTES])
                            for offset in range(0, len(data), PIECE_BYTES)])


Progress = Callable[[str, int], None]
"""Told how an upload goes: ("checksum", N) and ("send", N) as each N more bytes are hashed or sent, then
("import", 0) once all are sent and the node is converting and recording them."""


def checksum_of_file(file: BinaryIO, offset: int, size: int, progress: Progress | None = None) -> str:
    """The checksum of `size` bytes of regular `file` from `offset`, its pieces hashed in parallel from a mapping
    of the file (hashlib lets go of the interpreter while it hashes, and nothing is copied into Python). The file
    must not shrink meanwhile: reading a mapped page past its end is a fatal SIGBUS."""
    if not size:
        return combine_digests([])  # nothing to map; the coordinator refuses an empty upload by name
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    try:
        mapping = mmap.mmap(file.fileno(), offset - start + size, prot=mmap.PROT_READ, offset=start)
    except ValueError:
        raise errors.InvalidInput(f"the file ended before its announced size ({size} bytes)") from None

    def digest_piece(piece: int) -> bytes:
        first = offset - start + piece
        with memoryview(mapping)[first:first + min(PIECE_BYTES, size - piece)] as data:
            return piece_digest(data)

    digests = []
    with mapping, ThreadPoolExecutor(HASH_THREADS) as pool:
        for digest in pool.map(digest_piece, range(0, size, PIECE_BYTES)):
            digests.append(digest)
            if progress:
                progress("checksum", min(PIECE_BYTES, size - PIECE_BYTES * (len(digests) - 1)))
    return combine_digests(digests)


class SpooledSource:
    """Something to upload as a regular file: the file itself, or (for a pipe, a socket, a BytesIO) a
    private temporary copy, since the size and checksum must be announced before the first byte."""

    def __init__(self, source: BinaryIO | str, spool_directory: str | None = None):
        self._temporary: BinaryIO | None = None
        if isinstance(source, str):
            self.file: BinaryIO = open(source, "rb")
            self._owned = True
        else:
            self.file, self._owned = source, False
        if not _is_regular_file(self.file):
            self._temporary = tempfile.TemporaryFile(dir=spool_directory)
            shutil.copyfileobj(self.file, self._temporary, CHUNK_BYTES)
            self._temporary.seek(0)
            self.file = self._temporary
        self.offset = self.file.tell()
        self.size = os.fstat(self.file.fileno()).st_size - self.offset

    def close(self) -> None:
        if self._temporary is not None:
            self._temporary.close()
        elif self._owned:
            self.file.close()

    def __enter__(self) -> "SpooledSource":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _is_regular_file(file: BinaryIO) -> bool:
    try:
        return stat.S_ISREG(os.fstat(file.fileno()).st_mode)
    except (AttributeError, OSError, ValueError):
        return False


def server_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """The node's TLS for the channel: the certificate its agent serves Pyro5 with (None: no TLS, as for Pyro5;
    a cluster uses TLS everywhere or nowhere)."""
    if not cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key or None)
    return context


def client_context(ticket: dict[str, Any], tls_ca: str | None) -> ssl.SSLContext | None:
    """How to reach the node the `ticket` names: over TLS, verifying the node's certificate against `tls_ca`,
    when the node serves TLS. A client that uses TLS itself never sends an image in the clear."""
    if ticket.get("tls"):
        if not tls_ca:
            raise errors.ConfigError("the node's upload channel uses TLS: the client config needs tls_ca")
        return ssl.create_default_context(cafile=None if tls_ca == handshake.SYSTEM_CAS else tls_ca)
    if tls_ca:
        raise errors.ConfigError("the node's upload channel is not encrypted but this client uses TLS; refusing "
                                 "to send the image in the clear (give the node's pvcnoded a tls_cert)")
    return None


def _channel(address: str, timeout: float, tls: ssl.SSLContext | None, direction: str) -> socket.socket:
    """A connection to a node's upload channel at `address` (HOST:PORT), over TLS when `tls` is given."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        sock = socket.create_connection((host, int(port)), timeout=timeout)
    except OSError as error:
        raise errors.Unavailable(f"cannot reach the {direction} channel at {address}: {error.strerror or error}") \
            from None
    if tls is not None:
        try:
            sock = tls.wrap_socket(sock, server_hostname=host)
        except OSError as error:
            sock.close()
            raise errors.Unavailable(f"no TLS with the {direction} channel at {address}: {error}") from None
    return sock


def stream_upload(address: str, token: str, source: SpooledSource, checksum: str, timeout: float,
                  progress: Progress | None = None, tls: ssl.SSLContext | None = None,
                  trailer: str | None = None) -> dict[str, Any]:
    """Send `source` to the node at `address` (HOST:PORT) under `token`, over TLS when `tls` is given; the
    node's result message. With `trailer` (the key of `trailer_key`), `checksum` is ignored: the data is hashed
    while it is sent and its checksum follows it."""
    sock = _channel(address, timeout, tls, "upload")
    with sock, sock.makefile("rb") as reader, ThreadPoolExecutor(1) as hasher:
        send_message(sock, {"token": token, "size_bytes": source.size,
                            "checksum": TRAILER if trailer else checksum})
        raise_if_error(read_message(reader, "node's answer"))
        hashed = hasher.submit(checksum_of_file, source.file, source.offset, source.size) if trailer else None
        try:
            _send_body(sock, source, progress)
            if hashed is not None and not select.select([sock], [], [], 0)[0]:
                digest = hashed.result()
                send_message(sock, {"checksum": digest, "mac": trailer_mac(trailer, digest)})
        except OSError as error:
            # The node stops reading when it refuses a stream; its reason is waiting on the socket.
            try:
                raise_if_error(read_message(reader, "node's result"))
            except errors.InvalidInput:
                pass
            raise errors.Unavailable(f"the upload channel at {address} broke off: {error}") from None
        if progress:
            progress("import", 0)
        sock.settimeout(None)
        return raise_if_error(read_message(reader, "node's result"))


def _send_body(sock: socket.socket, source: SpooledSource, progress: Progress | None) -> None:
    """Send the data, stopping early if the node has answered already (it refuses as soon as it can): by
    sendfile(2) in the clear, through Python's buffers over TLS, which must encrypt them."""
    sent = 0
    while sent < source.size:
        if select.select([sock], [], [], 0)[0]:
            return
        length = min(CHUNK_BYTES, source.size - sent)
        if isinstance(sock, ssl.SSLSocket):
            data = os.pread(source.file.fileno(), length, source.offset + sent)
            sock.sendall(data)
            count = len(data)
        else:
            count = sock.sendfile(source.file, source.offset + sent, length)
        if count == 0:
            raise errors.InvalidInput(f"the file ended {source.size - sent} bytes short of its size")
        sent += count
        if progress:
            progress("send", count)


def stream_download(address: str, token: str, size_bytes: int, checksum: str, output: BinaryIO, timeout: float,
                    tls: ssl.SSLContext | None = None) -> None:
    """Receive into `output` the `size_bytes` bytes a node sends under `token` (a streamed export): the same
    header and answer as an upload, then the node's bytes in the other direction. A stream that ends short or
    with another checksum than the coordinator announced raises `InvalidInput`; `output` then holds what came."""
    sock = _channel(address, timeout, tls, "download")
    with sock, sock.makefile("rb") as reader:
        send_message(sock, {"token": token, "size_bytes": size_bytes, "checksum": checksum})
        raise_if_error(read_message(reader, "node's answer"))
        digests, received = [], 0
        while received < size_bytes:
            wanted = min(PIECE_BYTES, size_bytes - received)
            piece = reader.read(wanted)  # a buffered read returns fewer bytes only at the stream's end
            received += len(piece)
            if len(piece) < wanted:
                raise errors.InvalidInput(f"the export stream ended {size_bytes - received} bytes short")
            digests.append(piece_digest(piece))
            output.write(piece)
    if combine_digests(digests) != checksum:
        raise errors.InvalidInput("the export stream's checksum does not match the one announced")

