"""Read RBD snapshots for ``rbd diff v1`` streams through one long-lived librbd client: a helper of
`pvc.plugins.ceph_exports`.

Run as a program, never imported: it imports nothing from PVC, and reaches librados and librbd through ctypes,
because their Python modules read into a new ``bytes`` that must then be copied again. Here librbd reads
straight into memory the node shares (a memfd of ``slots`` pieces of ``slot_bytes``), from which the node
writes the stream: the data is copied once, as ``rbd export`` copies it. ``rbd export-diff`` starts a Ceph
client for every volume and compares every object of an incremental extent by extent; this client connects
once, serves export after export, and compares only the objects the object map says changed.

Its standard input is a ``SOCK_SEQPACKET`` Unix socket; each message is one JSON object. The first carries the
shared memory's descriptor (``SCM_RIGHTS``) and ``{"conf": PATH, "timeout": SECONDS, "idle": SECONDS,
"slots": N, "slot_bytes": BYTES}``, and is answered ``{"ready": true}``. Then:

- ``{"op": "size", "image": "POOL/NAME", "snapshot": S, "parent": P or null}``, answered
  ``{"records": N, "data": BYTES}``: the extent records and data bytes an export would carry, from the
  object map;
- ``{"op": "export", ...the same}``, answered ``{"size": BYTES}`` (the image's), then each extent record in
  the stream's order, ``{"z": [OFFSET, LENGTH]}`` or ``{"w": [OFFSET, LENGTH, SLOT]}``, whose data is in
  slot SLOT until the node answers ``{"free": SLOT}``, and last ``{"done": BYTES}``.

A failure is answered ``{"error": WHY}``, in place of any answer. It exits when the socket closes, or after
``idle`` seconds with no request; a ``free`` that comes after an export has ended is ignored.
"""
import ctypes
import errno
import json
import mmap
import os
import select
import socket
import sys
from collections import deque

READ_BYTES = 4 << 20
"""One read, and at most one ``w`` record: an RBD object's default size (and the node's slot size)."""
ZERO_BYTES = 1 << 30
"""At most one ``z`` record: PVC's own reader takes no record of more than 1 GiB."""
FINE_BY_OBJECT = 64
"""Up to this many changed objects are compared one by one; more, in one pass over the image."""

DIFF_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_uint64, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p)
HANDLE = ctypes.c_void_p


class Failure(Exception):
    pass


class Gone(Exception):
    """The node closed the socket: an export broke off, or the node is done with this helper."""


def _library(name: str, signatures: dict) -> ctypes.CDLL:
    library = ctypes.CDLL(name, use_errno=True)
    for function, (result, arguments) in signatures.items():
        getattr(library, function).restype = result
        getattr(library, function).argtypes = arguments
    return library


REF = ctypes.POINTER(HANDLE)
RADOS = _library("librados.so.2", {
    "rados_create": (ctypes.c_int, [REF, ctypes.c_char_p]),
    "rados_conf_read_file": (ctypes.c_int, [HANDLE, ctypes.c_char_p]),
    "rados_conf_set": (ctypes.c_int, [HANDLE, ctypes.c_char_p, ctypes.c_char_p]),
    "rados_connect": (ctypes.c_int, [HANDLE]),
    "rados_shutdown": (None, [HANDLE]),
    "rados_ioctx_create": (ctypes.c_int, [HANDLE, ctypes.c_char_p, REF]),
    "rados_ioctx_destroy": (None, [HANDLE]),
})
RBD = _library("librbd.so.1", {
    "rbd_open_read_only": (ctypes.c_int, [HANDLE, ctypes.c_char_p, REF, ctypes.c_char_p]),
    "rbd_close": (ctypes.c_int, [HANDLE]),
    "rbd_get_size": (ctypes.c_int, [HANDLE, ctypes.POINTER(ctypes.c_uint64)]),
    "rbd_diff_iterate2": (ctypes.c_int, [HANDLE, ctypes.c_char_p, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint8,
                                         ctypes.c_uint8, DIFF_CALLBACK, ctypes.c_void_p]),
    "rbd_aio_create_completion": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p, REF]),
    "rbd_aio_read": (ctypes.c_int, [HANDLE, ctypes.c_uint64, ctypes.c_size_t, ctypes.c_void_p, HANDLE]),
    "rbd_aio_wait_for_complete": (ctypes.c_int, [HANDLE]),
    "rbd_aio_get_return_value": (ctypes.c_ssize_t, [HANDLE]),
    "rbd_aio_release": (None, [HANDLE]),
})


REASONS = {errno.ENOENT: "not found", errno.ETIMEDOUT: "no answer from Ceph in time"}


def _check(result: int, doing: str) -> int:
    if result < 0:
        raise Failure(f"{doing}: {REASONS.get(-result) or os.strerror(-result)}")
    return result


class Image:
    """One snapshot, open read-only for the length of a request."""

    def __init__(self, context: HANDLE, pool: str, name: str, snapshot: str):
        self.handle = HANDLE()
        _check(RBD.rbd_open_read_only(context, name.encode(), ctypes.byref(self.handle), snapshot.encode()),
               f"image {pool}/{name} at snapshot {snapshot}")
        size = ctypes.c_uint64()
        try:
            _check(RBD.rbd_get_size(self.handle, ctypes.byref(size)), f"the size of {name}")
        except Failure:
            self.close()
            raise
        self.size = size.value

    def close(self) -> None:
        RBD.rbd_close(self.handle)

    def __enter__(self) -> "Image":
        return self

    def __exit__(self, *_exception) -> None:
        self.close()

    def diff(self, offset: int, length: int, parent, whole_object: bool) -> list:
        found = []
        callback = DIFF_CALLBACK(lambda start, count, exists, _argument: found.append((start, count, bool(exists)))
                                 or 0)
        _check(RBD.rbd_diff_iterate2(self.handle, parent.encode() if parent else None, offset, length, 1,
                                     int(whole_object), callback, None), "comparing the snapshot")
        return found


class Read:
    """One read in flight, into its slot of the shared memory."""

    def __init__(self, image: Image, offset: int, length: int, address: int):
        self.offset, self.length = offset, length
        self.completion = HANDLE()
        _check(RBD.rbd_aio_create_completion(None, None, ctypes.byref(self.completion)), "starting a read")
        started = RBD.rbd_aio_read(image.handle, offset, length, address, self.completion)
        if started < 0:
            RBD.rbd_aio_release(self.completion)
            _check(started, f"a read of {length} bytes at {offset}")

    def wait(self) -> None:
        """Until librbd is done with the slot; a read's own time is bounded by ``rados_osd_op_timeout``."""
        RBD.rbd_aio_wait_for_complete(self.completion)
        result = RBD.rbd_aio_get_return_value(self.completion)
        RBD.rbd_aio_release(self.completion)
        _check(result, f"a read of {self.length} bytes at {self.offset}")
        if result != self.length:
            raise Failure(f"a read of {self.length} bytes at {self.offset} returned {result}")


class Client:
    def __init__(self, conf: str, timeout: float, shared: mmap.mmap, slots: int, slot_bytes: int):
        self.cluster = HANDLE()
        _check(RADOS.rados_create(ctypes.byref(self.cluster), None), "creating a Ceph client")
        self.pools = {}
        try:
            _check(RADOS.rados_conf_read_file(self.cluster, conf.encode()), f"reading {conf}")
            for option in ("rados_osd_op_timeout", "rados_mon_op_timeout", "client_mount_timeout"):
                _check(RADOS.rados_conf_set(self.cluster, option.encode(), str(int(timeout)).encode()), option)
            _check(RADOS.rados_connect(self.cluster), "connecting")
        except Failure:
            RADOS.rados_shutdown(self.cluster)
            raise
        self.base = ctypes.addressof(ctypes.c_char.from_buffer(shared))
        self.slots, self.slot_bytes = slots, slot_bytes

    def close(self) -> None:
        for context in self.pools.values():
            RADOS.rados_ioctx_destroy(context)
        RADOS.rados_shutdown(self.cluster)

    def image(self, request: dict) -> Image:
        pool, name = request["image"].split("/", 1)
        if pool not in self.pools:
            context = HANDLE()
            _check(RADOS.rados_ioctx_create(self.cluster, pool.encode(), ctypes.byref(context)), f"pool {pool}")
            self.pools[pool] = context
        return Image(self.pools[pool], pool, name, request["snapshot"])

    def extents(self, image: Image, parent) -> list:
        """The snapshot's allocated extents (a full export) or those changed since `parent`, as (offset,
        length, exists); an extent discarded since `parent` does not exist. The object map names the changed
        objects first (1 ms for 2 GiB here); comparing the image extent by extent takes 21 ms, so where few
        objects changed only they are compared (0.27 ms each)."""
        objects = image.diff(0, image.size, parent, whole_object=True)
        if len(objects) > FINE_BY_OBJECT:
            objects = [(0, image.size, True)]
        found = []
        for offset, length, exists in objects:
            found.extend(image.diff(offset, length, parent, whole_object=False) if exists
                         else [(offset, length, False)])
        return found

    def size(self, request: dict) -> dict:
        with self.image(request) as image:
            found = _records(self.extents(image, request["parent"]))
        return {"records": len(found), "data": sum(length for _offset, length, exists in found if exists)}

    def export(self, request: dict, channel: socket.socket) -> dict:
        with self.image(request) as image:
            records = deque(_records(self.extents(image, request["parent"])))
            _say(channel, {"size": image.size})
            return {"done": self._extents(image, records, channel)}

    def _extents(self, image: Image, records: deque, channel: socket.socket) -> int:
        """Each record in order, data read into every free slot ahead of the node's writing."""
        free, reads, written = deque(range(self.slots)), deque(), 0
        try:
            while records or reads:
                free.extend(_freed(channel, block=not reads and not free))
                while records and (free or not records[0][2]):
                    offset, length, exists = records.popleft()
                    slot = free.popleft() if exists else None
                    reads.append((Read(image, offset, length, self.base + slot * self.slot_bytes)
                                  if exists else None, offset, length, slot))
                if not reads:
                    continue
                read, offset, length, slot = reads.popleft()
                if read is None:
                    _say(channel, {"z": [offset, length]})
                    continue
                read.wait()
                _say(channel, {"w": [offset, length, slot]})
                written += length
        finally:
            # librbd writes into the slots of reads still in flight: they end before the slots are reused.
            for read, *_rest in reads:
                if read is not None:
                    try:
                        read.wait()
                    except Failure:
                        pass
        return written


def _freed(channel: socket.socket, block: bool) -> list:
    """The slots the node has written out since last asked; with `block`, at least one."""
    slots = []
    while True:
        try:
            message = channel.recv(1 << 16, 0 if block and not slots else socket.MSG_DONTWAIT)
        except BlockingIOError:
            return slots
        if not message:
            raise Gone()
        slots.append(json.loads(message)["free"])


def _records(found: list) -> list:
    """The extents as the stream's records: data at most `READ_BYTES` (one read), zeros at most `ZERO_BYTES`."""
    return [(start, min(limit, offset + length - start), exists) for offset, length, exists in found
            for limit in (READ_BYTES if exists else ZERO_BYTES,) for start in range(offset, offset + length, limit)]


def _say(channel: socket.socket, message: dict) -> None:
    try:
        channel.send(json.dumps(message).encode())
    except OSError:
        raise Gone() from None


def serve(channel: socket.socket) -> int:
    first, descriptors, _flags, _address = socket.recv_fds(channel, 1 << 16, 1)
    if not first or len(descriptors) != 1:
        return 0
    settings = json.loads(first)
    slots, slot_bytes = int(settings["slots"]), int(settings["slot_bytes"])
    with mmap.mmap(descriptors[0], slots * slot_bytes) as shared:
        os.close(descriptors[0])
        try:
            client = Client(settings["conf"], float(settings["timeout"]), shared, slots, slot_bytes)
        except Failure as error:
            _say(channel, {"error": f"cannot reach Ceph: {error}"})
            return 1
        try:
            _serve(channel, client, float(settings["idle"]))
        except Gone:
            pass
        finally:
            client.close()
    return 0


def _serve(channel: socket.socket, client: Client, idle: float) -> None:
    """Requests until the socket closes or stays silent for `idle` seconds. The socket stays blocking, so that
    an export waits for the node as long as the node writes, and a ``MSG_DONTWAIT`` look for freed slots does
    not wait at all."""
    _say(channel, {"ready": True})
    while select.select([channel], [], [], idle)[0]:
        message = channel.recv(1 << 16)
        if not message:
            return
        request = json.loads(message)
        if "free" in request:
            continue
        try:
            answer = client.export(request, channel) if request["op"] == "export" else client.size(request)
        except (Failure, OSError) as error:
            answer = {"error": str(error) or type(error).__name__}
        _say(channel, answer)


if __name__ == "__main__":
    sys.exit(serve(socket.socket(fileno=sys.stdin.fileno())))
