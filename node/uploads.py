"""The node's end of the bulk upload channel (`pvc.bulk`): tickets, the listener, and the import itself.

An upload never touches its target volume until it is complete and checked. It is written into a hidden
volume of the pool (``.upload-ID``). Its format is read from its first bytes (`pvc.qemu_img.resolve_format`:
qemu-img never probes): a raw image goes straight from the socket; any other format is staged in a
file (qemu-img needs to seek) that qemu-img inspects, refuses if hostile, and converts while it still arrives
(`pvc.node.growing_export`). Only once the stream is complete and its checksum right, under the pool's
lock, does the hidden volume become the target (renamed, or replacing an existing volume's data) and the
volume's record in ZooKeeper change. On any failure the hidden volume and the staging file are removed, so
an existing volume is untouched and a new one never appears.

A ticket of the appliance kind (an OVA) comes through the same listener and hands its stream to
`pvc.node.appliance_uploads`, which keeps the same promises for the several volumes an appliance makes.
"""
import itertools
import logging
import os
import re
import secrets
import socket
import ssl
import tempfile
import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from pvc import bulk, schema
from pvc.errors import AuthenticationError, Busy, Conflict, InvalidInput, PVCError
from pvc.hookspecs import ApplianceImporter, ImageImporter, StorageBackend
from pvc.node.growing_export import GrowingFileExport, stop_listening
from pvc.node.pool_room import PoolRoom
from pvc.node.upload_stream import StagedReceive, VerifiedStream, receive_head
from pvc.qemu_img import SUPPORTED_FORMATS, QemuImg, resolve_format
from pvc.store import Store, Transaction
from pvc.storage_records import record_upload, volume_users

log = logging.getLogger(__name__)

REFUSAL_DRAIN_S = 5
BODY_IDLE_TIMEOUT_S = 120
HEADER_DEADLINE_S = 15
MAX_UNADMITTED = 16
STAGING_LEFTOVERS = (".stage-", ".probe-", ".mirror-", ".import-")


@dataclass(frozen=True)
class Ticket:
    """What a token allows: one upload of exactly `size_bytes`, with `checksum`, into `pool`/`volume`; with
    `force`, even over a volume a VM uses."""

    token: str
    pool: str
    volume: str
    size_bytes: int
    image_format: str
    checksum: str
    force: bool
    expires_at: float
    appliance_importer: str | None = None
    """For an appliance upload (`pvc.node.appliance_uploads`): the importer that reads it; `volume` is then
    the appliance's name."""
    mirror: dict[str, Any] | None = None
    """For a mirror send from another cluster (`pvc.node.mirror_transfer`): its checked manifest; `volume` is
    then the VM's name."""
    download: str | None = None
    """For a streamed export (`pvc.node.mirror_transfer.send_stage`): the staged file sent to the client, in
    place of receiving anything; `volume` is then the VM's name."""
    stage_into: str | None = None
    """For an import streamed from a client (`pvc.node.mirror_transfer.receive_stage`): the staging file the
    stream is checked into, for the coordinator's import to apply; `volume` is then the new VM's name."""


class Tickets:
    """Single-use, short-lived upload tokens, held in this node's memory only."""

    def __init__(self, lifetime_seconds: float):
        self._lifetime = lifetime_seconds
        self._lock = threading.Lock()
        self._tickets: dict[str, Ticket] = {}
        self._receiving: set[str] = set()
        """The mirror sends (``VM@SNAPSHOT``) whose stream is being applied here now."""

    def issue(self, pool: str, volume: str, size_bytes: int, image_format: str, checksum: str,
              force: bool, appliance_importer: str | None = None, mirror: dict[str, Any] | None = None,
              download: str | None = None, stage_into: str | None = None) -> Ticket:
        ticket = Ticket(secrets.token_urlsafe(32), pool, volume, size_bytes, image_format, checksum, force,
                        time.monotonic() + self._lifetime, appliance_importer, mirror, download, stage_into)
        with self._lock:
            self._expire()
            self._tickets[ticket.token] = ticket
        return ticket

    def redeem(self, token: object) -> Ticket:
        """The ticket for `token`, which is spent by this call whatever follows."""
        with self._lock:
            self._expire()
            ticket = self._tickets.pop(token, None) if isinstance(token, str) else None
        if ticket is None:
            raise AuthenticationError("upload token unknown, already used or expired")
        return ticket

    @contextmanager
    def receiving(self, ticket: Ticket) -> Iterator[None]:
        """Mark a mirror send's stream as being applied while its job runs (`stop_mirror`)."""
        key = f"{ticket.mirror['vm']}@{ticket.mirror['snapshot']}"
        with self._lock:
            self._receiving.add(key)
        try:
            yield
        finally:
            with self._lock:
                self._receiving.discard(key)

    def stop_mirror(self, vm: str, snapshot: str) -> bool:
        """Before a mirror send is undone: its unused tickets can no longer be redeemed; True while its stream
        is still being applied here (the undo must wait for it, or it would roll back under a writer)."""
        with self._lock:
            for token in [token for token, ticket in self._tickets.items()
                          if ticket.mirror and (ticket.mirror["vm"], ticket.mirror["snapshot"]) == (vm, snapshot)]:
                del self._tickets[token]
            return f"{vm}@{snapshot}" in self._receiving

    def _expire(self) -> None:
        now = time.monotonic()
        for token in [token for token, ticket in self._tickets.items() if ticket.expires_at < now]:
            expired = self._tickets.pop(token)
            if expired.download is not None:
                Path(expired.download).unlink(missing_ok=True)


@dataclass
class UploadContext:
    """What an import needs from the node."""

    node_name: str
    store: Store
    transaction: Callable[[], Transaction]
    """The node's ownership-checked transaction (`NodeOwnership.transaction`): every record an import writes
    goes through it, so a daemon that no longer owns its node (a clone, or one whose session was replaced)
    records nothing."""
    backend: StorageBackend
    importers: dict[str, ImageImporter]
    qemu_img: QemuImg
    staging_directory: Path
    room: PoolRoom
    appliance_importers: dict[str, ApplianceImporter] = field(default_factory=dict)


class ImportJob:
    """One upload, from the verified stream to the volume's record."""

    def __init__(self, context: UploadContext, ticket: Ticket):
        self.context = context
        self.ticket = ticket
        self.hidden_volume = hidden_name(context.node_name)
        self._room_query: Future | None = None

    def run(self, connection: socket.socket) -> dict[str, Any]:
        """Receive the upload from `connection`, import it and record it: the volume as recorded."""
        ticket = self.ticket
        try:
            head = receive_head(connection, ticket.size_bytes)
            image_format = resolve_format(ticket.image_format, head, declared_formats(self.context.importers))
            importer = self._importer(image_format)
            if importer.needs_seekable_source:
                size = self._import_staged(connection, head, importer, image_format)
            else:
                size = self._import_streamed(connection, head, importer, image_format)
            return self._commit(image_format, size)
        except BaseException:
            self._discard_hidden_volume()
            raise

    def _import_streamed(self, connection: socket.socket, head: bytes, importer: ImageImporter,
                         image_format: str) -> int:
        """Hand the pieces to the importer as they arrive. The image's size: the upload's."""
        ticket = self.ticket
        stream = VerifiedStream(connection, ticket.size_bytes, ticket.checksum, head)
        try:
            self._ask_room(ticket.size_bytes)
            self._check_capacity(ticket.size_bytes)
            importer.import_image(iter(stream), ticket.size_bytes, image_format,
                                  self.context.backend.volume_target(ticket.pool, self.hidden_volume),
                                  self.context.qemu_img)
        finally:
            stream.close()
        return ticket.size_bytes

    def _import_staged(self, connection: socket.socket, head: bytes, importer: ImageImporter,
                       image_format: str) -> int:
        """Stage the upload while qemu-img inspects and converts it through a `GrowingFileExport`, so the
        conversion overlaps the transfer; the stream's own verdict (short, wrong checksum) decides last.
        qemu-img's wall-clock limits count from the upload's end: until then it may wait for the upload.
        The image's virtual size."""
        ticket = self.ticket
        staged = self._staging_file()
        export = receiver = None
        try:
            export = GrowingFileExport(staged, ticket.size_bytes, staged.with_name(staged.name + ".nbd"))
            qemu_img = replace(self.context.qemu_img, source_complete=export.settled,
                               working_directory=str(export.directory))
            receiver = StagedReceive(connection, head, str(staged), ticket.size_bytes, ticket.checksum,
                                     export.advance, export.fail)
            export.start()
            receiver.start()
            started = time.monotonic()
            try:
                size = importer.inspect(export.url, image_format, qemu_img)
                self._convert_while_checking_room(importer, image_format, size, qemu_img, export)
            except BaseException:
                receiver.raise_if_failed()
                raise
            converted = time.monotonic()
            receiver.join()
            receiver.raise_if_failed()
            log.info("upload into %s/%s: %s converted in %.2f s as it arrived, all received after %.2f s",
                     ticket.pool, ticket.volume, image_format, converted - started, time.monotonic() - started)
            return size
        finally:
            if receiver is not None:
                receiver.stop()
            if export is not None:
                export.close()
            staged.unlink(missing_ok=True)

    def _importer(self, image_format: str) -> ImageImporter:
        for importer in self.context.importers.values():
            if image_format in importer.formats:
                return importer
        raise InvalidInput(f"no image importer handles format {image_format!r}")

    def _staging_file(self) -> Path:
        directory = self.context.staging_directory
        free = _free_bytes(directory)
        if self.ticket.size_bytes > free:
            raise InvalidInput(f"the upload ({self.ticket.size_bytes} bytes) does not fit the node's staging "
                               f"space ({free} bytes free)")
        descriptor, name = tempfile.mkstemp(dir=directory, prefix=".stage-")
        os.close(descriptor)
        return Path(name)

    def _ask_room(self, size_bytes: int) -> None:
        """Ask, in the background, whether an image of `size_bytes` fits: the target's current size (0 if new)
        and what the pool can still hold (`PoolRoom`) are each a round trip to the storage."""
        backend, ticket = self.context.backend, self.ticket
        self._room_query = Future()

        def ask() -> None:
            try:
                existing = backend.volume_size(ticket.pool, ticket.volume) or 0
                self._room_query.set_result(self.context.room.fits(ticket.pool, size_bytes - existing))
            except BaseException as error:
                self._room_query.set_exception(error)
        threading.Thread(target=ask, name="upload-room", daemon=True).start()

    def _convert_while_checking_room(self, importer: ImageImporter, image_format: str, size_bytes: int,
                                     qemu_img: QemuImg, export: GrowingFileExport) -> None:
        """Convert the image (`size_bytes` virtual) without waiting for the answer to whether the pool can hold
        it (on Ceph ``ceph df`` takes a third of a second), and make qemu-img stop as soon as the answer is no,
        by failing its reads: until then it can write no more than has arrived, into the hidden volume, which
        goes with the refusal. qemu-img may well fail first (a file larger than the filesystem allows): the
        pool's no is the reason given then too."""
        def decide(_answered: Future) -> None:
            try:
                self._check_capacity(size_bytes)
            except BaseException:
                export.refuse()

        self._ask_room(size_bytes)
        self._room_query.add_done_callback(decide)
        try:
            importer.import_image(export.url, size_bytes, image_format,
                                  self.context.backend.volume_target(self.ticket.pool, self.hidden_volume), qemu_img)
        except BaseException:
            self._check_capacity(size_bytes)  # the pool's answer, when it is no, is why qemu-img stopped or failed
            raise
        self._check_capacity(size_bytes)

    def _check_capacity(self, size_bytes: int) -> None:
        """Refuse the image (`size_bytes` virtual) if the room query said it does not fit."""
        fits, free = self._room_query.result()
        if not fits:
            raise InvalidInput(f"the image's virtual size ({size_bytes} bytes) exceeds what pool "
                               f"'{self.ticket.pool}' can still hold ({free} bytes)")

    def _commit(self, image_format: str, size: int) -> dict[str, Any]:
        """Make the hidden volume (`size` bytes) the target and record it, under the pool's lock."""
        ticket, backend = self.ticket, self.context.backend
        lock = self.context.store.lock(schema.storage_lock(ticket.pool), self.context.node_name)
        if not lock.acquire(timeout=30):
            raise Busy(f"pool '{ticket.pool}' stayed locked by another change; the upload was not imported")
        try:
            existing = backend.volume_size(ticket.pool, ticket.volume)
            if existing is not None:
                self._refuse_if_used()
            if existing is not None and existing > size:
                backend.volume_resize(ticket.pool, self.hidden_volume, existing)
                size = existing
            if existing is not None:
                with backend.volume_replace(ticket.pool, self.hidden_volume, ticket.volume):
                    return self._record(size, image_format)
            backend.volume_rename(ticket.pool, self.hidden_volume, ticket.volume)
            try:
                return self._record(size, image_format)
            except BaseException:
                backend.volume_remove(ticket.pool, ticket.volume)
                raise
        finally:
            lock.release()

    def _record(self, size: int, image_format: str) -> dict[str, Any]:
        return record_upload(self.context.store, self.context.transaction, self.ticket.pool, self.ticket.volume,
                             size, image_format)

    def _refuse_if_used(self) -> None:
        """A VM may have started using the volume since the upload began, so this is checked again, from
        ZooKeeper, under the pool's lock, just before the volume's data changes."""
        ticket = self.ticket
        users = volume_users(self.context.store, ticket.pool, ticket.volume)
        if users and not ticket.force:
            raise Conflict(f"volume '{ticket.pool}/{ticket.volume}' is used by VM(s) {', '.join(users)}; refusing "
                           "to overwrite it unless forced; the upload was not imported")

    def _discard_hidden_volume(self) -> None:
        try:
            self.context.backend.volume_remove(self.ticket.pool, self.hidden_volume)
        except Exception as error:
            log.error("could not remove the unfinished upload %s/%s: %s", self.ticket.pool, self.hidden_volume,
                      error)


def declared_formats(importers: Mapping[str, ImageImporter]) -> tuple[str, ...]:
    """The formats only image importer plugins declare: an upload names them (none is ever detected)."""
    return tuple(sorted({image_format for importer in importers.values() for image_format in importer.formats}
                        - set(SUPPORTED_FORMATS)))


def upload_formats(importers: Mapping[str, ImageImporter]) -> tuple[str, ...]:
    """What an upload may name: ``auto``, the formats PVC detects, and those plugins declare."""
    return ("auto", *SUPPORTED_FORMATS, *declared_formats(importers))


def hidden_prefix(node_name: str) -> str:
    """How this node's uploads in progress are named in a pool, which other nodes may share (Ceph, a shared
    mount): so a node sweeps only its own. What follows is ``PID-COUNTER-HEX8``, then perhaps ``-diskN``
    and ``.replaced``, none of which holds a node name: `upload_owner` reads the name back exactly."""
    return f".upload-{node_name}-"


_hidden_names = itertools.count()


def hidden_name(node_name: str) -> str:
    """A fresh name for one of this node's uploads in progress."""
    return f"{hidden_prefix(node_name)}{os.getpid()}-{next(_hidden_names)}-{secrets.token_hex(4)}"


_HIDDEN = re.compile(r"\.upload-(?P<node>.+)-\d+-\d+-[0-9a-f]{8}(?:-disk\d+)?(?:\.replaced)?")


def upload_owner(volume_name: str) -> str | None:
    """The node whose upload left `volume_name`, or None for a volume that is not an upload's (the tail is
    fixed, so node ``hv1`` never claims node ``hv1-b``'s leftovers)."""
    match = _HIDDEN.fullmatch(volume_name)
    return match["node"] if match else None


def sweep_leftovers(context: UploadContext, backend_name: str) -> None:
    """Remove what this node's uploads left when it last stopped (a crash, a kill): its hidden volumes in the
    pools of its backend, and its staging files. Called before the node accepts uploads, when none of them
    can still be in use. A ``.replaced`` volume may hold a volume's only copy of its old data (a Ceph
    replacement cut off between its renames), so it is reported, never removed."""
    for path in context.staging_directory.iterdir():
        if path.name.startswith(STAGING_LEFTOVERS) or path.name.endswith(".nbd"):
            log.warning("removing the staging leftover %s", path)
            path.unlink(missing_ok=True)
    for pool in context.store.children(schema.POOLS):
        if (context.store.read(schema.pool(pool)) or {}).get("backend") != backend_name:
            continue
        try:
            for name in context.backend.volume_names(pool):
                if upload_owner(name) != context.node_name:
                    continue
                if name.endswith(".replaced"):
                    log.error("%s/%s may hold a volume's old data from an interrupted upload; check it and "
                              "remove it by hand", pool, name)
                else:
                    log.warning("removing the unfinished upload %s/%s", pool, name)
                    context.backend.volume_remove(pool, name)
        except PVCError as error:
            log.error("could not sweep upload leftovers in pool '%s': %s", pool, error)


class NotTLS(InvalidInput):
    """A client that speaks in the clear to a node that serves TLS: told so, in the clear, on `connection`."""

    def __init__(self, connection: socket.socket, reason: str):
        super().__init__(f"no TLS handshake ({reason}): this node's upload channel takes TLS only")
        self.connection = connection


def _refuse(connection: socket.socket, error: BaseException) -> None:
    """Answer with the error, then read (and drop) what the client still sends for a moment: closing a
    socket with unread data resets it, and the client would lose the answer. The client checks for an
    answer between chunks, so it stops sending soon; one that does not is cut off at a fixed deadline."""
    try:
        bulk.send_message(connection, bulk.error_message(error))
        connection.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + REFUSAL_DRAIN_S
        while (remaining := deadline - time.monotonic()) > 0:
            connection.settimeout(remaining)
            if not connection.recv(bulk.CHUNK_BYTES):
                return
    except OSError:
        pass


def _free_bytes(directory: Path) -> int:
    filesystem = os.statvfs(directory)
    return filesystem.f_bavail * filesystem.f_frsize


class UploadListener:
    """Accepts bulk connections, one thread each, and answers each with the import's result.

    With `tls`, every connection must be TLS. Anyone can connect, so connections not yet admitted by a token
    are few (`max_unadmitted`; more are closed at once) and short-lived: the header must arrive within
    `header_deadline` seconds all told."""

    def __init__(self, host: str, port: int, tickets: Tickets, context_factory: Callable[[], UploadContext],
                 header_deadline: float = HEADER_DEADLINE_S, max_unadmitted: int = MAX_UNADMITTED,
                 tls: ssl.SSLContext | None = None):
        self._tickets = tickets
        self._tls = tls
        self._context_factory = context_factory
        self._header_deadline = header_deadline
        self._unadmitted = threading.BoundedSemaphore(max_unadmitted)
        self._server = socket.create_server((host, port), reuse_port=False, backlog=16)
        self.address = "%s:%d" % self._server.getsockname()[:2]
        self._stopping = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._accept_loop, name="upload-listener", daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()
        stop_listening(self._server)

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, peer = self._server.accept()
            except OSError:
                return
            if not self._unadmitted.acquire(blocking=False):
                log.warning("bulk connection from %s closed: too many connections await admission", peer[0])
                connection.close()
                continue
            threading.Thread(target=self._serve, args=(connection, peer), name="upload", daemon=True).start()

    def _serve(self, connection: socket.socket, peer: tuple) -> None:
        """Holds one of the unadmitted slots (taken by the accept loop) until the token is redeemed, or
        until a refusal has been answered and drained."""
        admitted = False
        try:
            deadline = time.monotonic() + self._header_deadline
            connection = self._secured(connection, deadline)
            ticket = self._admit(connection, deadline)
            admitted = True
            self._unadmitted.release()
            bulk.send_message(connection, {"ready": True})
            connection.settimeout(BODY_IDLE_TIMEOUT_S)
            started = time.monotonic()
            if ticket.download is not None:
                from pvc.node.mirror_transfer import send_stage
                send_stage(connection, ticket)
                log.info("export of %s (%d bytes) streamed to %s in %.1f s", ticket.volume, ticket.size_bytes,
                         peer[0], time.monotonic() - started)
                return
            if ticket.stage_into is not None:
                from pvc.node.mirror_transfer import receive_stage
                result = {"staged": receive_stage(connection, ticket)}
            elif ticket.mirror is not None:
                from pvc.node.mirror_transfer import MirrorReceiveJob
                with self._tickets.receiving(ticket):
                    result = {"mirror": MirrorReceiveJob(self._context_factory().backend, ticket).run(connection)}
            elif ticket.appliance_importer is not None:
                from pvc.node.appliance_uploads import ApplianceImportJob
                result = {"appliance": ApplianceImportJob(self._context_factory(), ticket).run(connection)}
            else:
                result = {"volume": ImportJob(self._context_factory(), ticket).run(connection)}
            log.info("upload of %d bytes from %s into %s/%s done in %.1f s", ticket.size_bytes, peer[0],
                     ticket.pool, ticket.volume, time.monotonic() - started)
            bulk.send_message(connection, result)
        except NotTLS as error:
            log.warning("upload from %s refused: %s", peer[0], error)
            with error.connection:
                _refuse(error.connection, error)
        except (PVCError, OSError, ValueError) as error:
            log.warning("upload from %s not imported: %s", peer[0], error)
            _refuse(connection, error)
        except Exception as error:
            log.exception("upload from %s failed", peer[0])
            _refuse(connection, error)
        finally:
            if not admitted:
                self._unadmitted.release()
            connection.close()

    def _secured(self, connection: socket.socket, deadline: float) -> socket.socket:
        """The connection under TLS when this node serves TLS, the handshake done by the monotonic
        `deadline` that the header must also meet."""
        if self._tls is None:
            return connection
        secured = self._tls.wrap_socket(connection, server_side=True, do_handshake_on_connect=False)
        secured.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            secured.do_handshake()
        except ssl.SSLError as error:
            raise NotTLS(socket.socket(fileno=secured.detach()), error.reason) from None
        except BaseException:
            secured.close()
            raise
        return secured

    def _admit(self, connection: socket.socket, deadline: float) -> Ticket:
        header = bulk.receive_message(connection, "upload header", deadline)
        ticket = self._tickets.redeem(header.get("token"))
        try:
            return _checked_header(header, ticket)
        except BaseException:
            if ticket.download is not None:
                Path(ticket.download).unlink(missing_ok=True)
            raise


def _checked_header(header: dict[str, Any], ticket: Ticket) -> Ticket:
    """`ticket`, if the header announces the size and checksum it was issued for."""
    if header.get("size_bytes") != ticket.size_bytes:
        raise InvalidInput(f"the stream announces {header.get('size_bytes')} bytes but the upload was "
                           f"declared with {ticket.size_bytes}")
    checksum = header.get("checksum")
    if ticket.checksum.startswith(bulk.TRAILER_PREFIX):
        if checksum != bulk.TRAILER:
            raise InvalidInput("the upload was declared with its checksum last, but the stream announces one "
                               "first; nothing was imported")
        return ticket
    if not isinstance(checksum, str) or len(checksum) != 64 or any(c not in "0123456789abcdef" for c in checksum):
        raise InvalidInput("the stream announces no valid checksum (64 hex digits)")
    if not secrets.compare_digest(checksum, ticket.checksum):
        raise InvalidInput("the stream announces another checksum than the upload was declared with; nothing "
                           "was imported")
    return ticket
