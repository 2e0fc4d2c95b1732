"""An appliance upload (an OVA) on the node: the archive read as it arrives, its disks imported into hidden
volumes by the appliance importer, then landed as ``ova_NAME_diskN`` and reported.

Crash safety, one step at a time:

1. while importing, the node holds an ephemeral marker (`schema.ova_importing`), so a coordinator knows the
   import is alive; the disks go into hidden volumes (``.upload-NODE-...``) that this node's start-up sweep
   removes (`pvc.node.uploads.sweep_leftovers`), as the staging files (``.stage-``);
2. once the archive is whole and its checksum right, under the pool's lock, the node records its intent
   (`schema.ova_import`, ``state: landing``, naming the final volumes) before renaming anything;
3. it renames the hidden volumes, then in one transaction records the volumes and its report (``state:
   done``, with the hardware).

A coordinator that finds an OVA still ``importing`` with no live marker clears it: the volumes a ``landing``
report names, their records, the report and the OVA (`pvc.rpc.areas.ova`). Nothing else is left behind.
"""
import hashlib
import hmac
import logging
import queue
import socket
import threading
import time
from typing import Any

from pvc import bulk, placement, schema
from pvc.errors import AlreadyExists, Busy, InvalidInput, NotFound
from pvc.hookspecs import ApplianceResult, VolumeTarget
from pvc.node.upload_stream import POLL_INTERVAL_S, put_unless_stopped, receive_into
from pvc.node.uploads import Ticket, UploadContext, hidden_name
from pvc.storage_records import volume_record

log = logging.getLogger(__name__)

READ_BYTES = 1 << 20
QUEUED_CHUNKS = 8
LOCK_TIMEOUT_S = 30
TRAILER_TIMEOUT_S = 30


class VerifiedReader:
    """The upload as a file to read once, in order: exactly the announced bytes.

    A thread receives them in `READ_BYTES` chunks and hashes them (`pvc.bulk`'s piece checksum) while the
    reader parses, hashes and writes the previous ones, so the two overlap on two cores; at most
    `QUEUED_CHUNKS` wait, which bounds memory. A read raises `InvalidInput` if the stream stalls or ends short;
    `verify` drains what the reader left and raises if the checksum differs. `close` stops the thread."""

    def __init__(self, connection: socket.socket, size_bytes: int, checksum: str):
        self._connection = connection
        self._size = size_bytes
        self._checksum = checksum
        self._digest: str | None = None
        self._chunks: queue.Queue = queue.Queue(maxsize=QUEUED_CHUNKS)
        self._chunk = bytearray()
        self._offset = 0
        self._ended = False
        self._stopping = threading.Event()
        self._idle_limit_s = connection.gettimeout()
        self._receiver = threading.Thread(target=self._receive, name="appliance-receive", daemon=True)
        self._receiver.start()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes | bytearray:
        if self._offset == len(self._chunk):
            if self._ended:
                return b""
            item = self._next_item()
            if item is None:
                self._ended = True
                return b""
            self._chunk, self._offset = item, 0
        available = len(self._chunk) - self._offset
        if size < 0 or size >= available:
            data = self._chunk if self._offset == 0 else self._chunk[self._offset:]
            self._offset = len(self._chunk)
            return data
        data = self._chunk[self._offset:self._offset + size]
        self._offset += size
        return data

    def verify(self) -> None:
        """Drain the stream and check its checksum: the one declared first, or the trailer that follows the
        data when the upload was declared with a key (`pvc.bulk.TRAILER_PREFIX`), whose MAC proves it comes
        from whoever declared the upload."""
        while self.read():
            pass
        expected = self._checksum
        if expected.startswith(bulk.TRAILER_PREFIX):
            trailer = bulk.receive_message(self._connection, "upload's trailer",
                                           time.monotonic() + (self._idle_limit_s or TRAILER_TIMEOUT_S))
            expected = trailer.get("checksum")
            if not isinstance(expected, str) or not isinstance(trailer.get("mac"), str) or not hmac.compare_digest(
                    trailer["mac"], bulk.trailer_mac(self._checksum[len(bulk.TRAILER_PREFIX):], expected)):
                raise InvalidInput("the upload's trailer is not signed with the key it was declared with; nothing "
                                   "was imported")
        if self._digest != expected:
            raise InvalidInput("the upload's checksum does not match the one announced; nothing was imported")

    def close(self) -> None:
        """Stop receiving; returns once the thread has let go of the connection."""
        self._stopping.set()
        self._receiver.join()

    def _next_item(self) -> bytearray | None:
        while True:
            try:
                item = self._chunks.get(timeout=POLL_INTERVAL_S)
            except queue.Empty:
                continue
            if isinstance(item, BaseException):
                raise item
            return item

    def _receive(self) -> None:
        try:
            remaining, piece, piece_bytes, digests = self._size, hashlib.sha256(), 0, []
            while remaining:
                chunk = bytearray(min(READ_BYTES, remaining))
                with memoryview(chunk) as view:
                    received = receive_into(self._connection, view, self._stopping, self._idle_limit_s)
                if received < len(chunk):
                    raise InvalidInput(f"the upload ended {remaining - received} bytes short of its announced "
                                       "size; nothing was imported")
                remaining -= received
                with memoryview(chunk) as view:
                    while len(view):
                        take = min(len(view), bulk.PIECE_BYTES - piece_bytes)
                        piece.update(view[:take])
                        piece_bytes, view = piece_bytes + take, view[take:]
                        if piece_bytes == bulk.PIECE_BYTES:
                            digests.append(piece.digest())
                            piece, piece_bytes = hashlib.sha256(), 0
                self._put(chunk)
            if piece_bytes:
                digests.append(piece.digest())
            self._digest = bulk.combine_digests(digests)
            self._put(None)
        except BaseException as error:
            self._put(error)

    def _put(self, item: object) -> None:
        put_unless_stopped(self._chunks, item, self._stopping)


class HiddenVolumes:
    """`ApplianceVolumes` for one import: disk `index` goes into a hidden volume of the pool until landing."""

    def __init__(self, context: UploadContext, pool: str):
        self._context = context
        self._pool = pool
        self._prefix = f"{hidden_name(context.node_name)}-disk"
        self.staging_directory = context.staging_directory
        self.touched: set[int] = set()

    def name(self, index: int) -> str:
        return f"{self._prefix}{index}"

    def check_room(self, size_bytes: int) -> None:
        fits, free = self._context.room.fits(self._pool, size_bytes)
        if not fits:
            raise InvalidInput(f"the appliance's disks ({size_bytes} bytes) exceed what pool '{self._pool}' can "
                               f"still hold ({free} bytes)")

    def check_hardware(self, vcpus: int, memory_bytes: int) -> None:
        """Against the nodes' own records in ZooKeeper: an appliance no node could run is refused before any
        disk streams in."""
        store = self._context.store
        nodes = [{"name": name, **(store.read(schema.node(name)) or {})} for name in store.children(schema.NODES)]
        placement.check_fits_a_node(nodes, {"vcpus": vcpus, "memory_mib": -(-memory_bytes // (1 << 20))},
                                    "the appliance")

    def target(self, index: int) -> VolumeTarget:
        self.touched.add(index)
        return self._context.backend.volume_target(self._pool, self.name(index))

    def create(self, index: int, size_bytes: int) -> None:
        self.touched.add(index)
        self._context.backend.volume_create(self._pool, self.name(index), size_bytes)

    def resize(self, index: int, size_bytes: int) -> None:
        self._context.backend.volume_resize(self._pool, self.name(index), size_bytes)

    def discard(self) -> None:
        for index in sorted(self.touched):
            try:
                self._context.backend.volume_remove(self._pool, self.name(index))
            except Exception as error:
                log.error("could not remove the unfinished appliance volume %s/%s: %s", self._pool,
                          self.name(index), error)


class ApplianceImportJob:
    """One appliance upload, from the stream to the node's report."""

    def __init__(self, context: UploadContext, ticket: Ticket):
        self.context = context
        self.ticket = ticket
        self.appliance = ticket.volume

    def run(self, connection: socket.socket) -> dict[str, Any]:
        """Import the appliance arriving on `connection`; its report as recorded."""
        ticket, store = self.ticket, self.context.store
        importer = self.context.appliance_importers.get(ticket.appliance_importer)
        if importer is None:
            raise NotFound(f"no appliance importer named '{ticket.appliance_importer}' on this node")
        if store.read(schema.ova(self.appliance)) is None:
            raise NotFound(f"no OVA '{self.appliance}' is being uploaded (its record is gone)")
        try:
            self.context.transaction().create(schema.ova_importing(self.appliance),
                                              {"node": self.context.node_name}, ephemeral=True).commit()
        except AlreadyExists:
            raise Busy(f"OVA '{self.appliance}' is being imported already") from None
        volumes = HiddenVolumes(self.context, ticket.pool)
        reader = VerifiedReader(connection, ticket.size_bytes, ticket.checksum)
        try:
            result = importer.import_appliance(reader, ticket.size_bytes, volumes, self.context.qemu_img)
            reader.verify()
            return self._land(result, volumes)
        except BaseException:
            volumes.discard()
            raise
        finally:
            reader.close()
            self.context.transaction().delete(schema.ova_importing(self.appliance)).commit()

    def _land(self, result: ApplianceResult, volumes: HiddenVolumes) -> dict[str, Any]:
        """Record the intent, rename the hidden volumes to their final names, record them and the report."""
        ticket, store, backend = self.ticket, self.context.store, self.context.backend
        final = [{**volume, "pool": ticket.pool, "name": schema.ova_volume(self.appliance, volume["index"])}
                 for volume in result.volumes]
        lock = store.lock(schema.storage_lock(ticket.pool), self.context.node_name)
        if not lock.acquire(timeout=LOCK_TIMEOUT_S):
            raise Busy(f"pool '{ticket.pool}' stayed locked by another change; the OVA was not imported")
        try:
            for volume in final:
                if store.read(schema.volume(ticket.pool, volume["name"])) is not None \
                        or backend.volume_size(ticket.pool, volume["name"]) is not None:
                    raise AlreadyExists(f"volume '{ticket.pool}/{volume['name']}' exists already; the OVA was not "
                                        "imported")
            names = [f"{ticket.pool}/{volume['name']}" for volume in final]
            self.context.transaction().create(schema.ova_import(self.appliance),
                                              {"state": "landing", "node": self.context.node_name,
                                               "volumes": names}).commit()
            landed = []
            try:
                for volume in final:
                    backend.volume_rename(ticket.pool, volumes.name(volume["index"]), volume["name"])
                    landed.append(volume["name"])
                report = {"state": "done", "node": self.context.node_name, "volumes": final,
                          "hardware": result.hardware, **result.details}
                transaction = self.context.transaction().set(schema.ova_import(self.appliance), report)
                for volume in final:
                    transaction.create(schema.volume(ticket.pool, volume["name"]),
                                       volume_record(ticket.pool, volume["name"], volume["size_bytes"]))
                    transaction.create(schema.volume_snapshots(ticket.pool, volume["name"]), {})
                transaction.commit()
            except BaseException:
                for name in landed:
                    backend.volume_remove(ticket.pool, name)
                self.context.transaction().delete(schema.ova_import(self.appliance)).commit()
                raise
            return report
        finally:
            lock.release()
