"""Stream RBD snapshots as ``rbd diff v1`` through one long-lived librbd client: a helper of
`pvc.plugins.ceph_exports`.

Run by the interpreter Ceph's ``rados`` and ``rbd`` modules are installed for, never imported: it imports
nothing from PVC. ``rbd export-diff`` starts a Ceph client for every volume and compares every object of an
incremental extent by extent; this client connects once, serves export after export, and compares only the
objects the object map says changed.

Its standard input is a ``SOCK_SEQPACKET`` Unix socket; each message is one JSON object. The first names the
cluster and how long to wait, ``{"conf": PATH, "timeout": SECONDS, "idle": SECONDS}``, and is answered
``{"ready": true}``. Then:

- ``{"op": "size", "image": "POOL/NAME", "snapshot": S, "parent": P or null}``, answered
  ``{"records": N, "data": BYTES}``: the extent records and data bytes an export would carry, from the
  object map;
- ``{"op": "export", ...the same}`` with a file descriptor (``SCM_RIGHTS``) that it writes the stream into and
  closes, answered ``{"done": BYTES}``.

A failure is answered ``{"error": WHY}``. It exits when the socket closes, or after ``idle`` seconds with no
request.
"""
import json
import os
import socket
import struct
import sys
import threading
from collections import deque

import rados
import rbd

READ_BYTES = 4 << 20
"""One read, and at most one ``w`` record: an RBD object's default size."""
IN_FLIGHT = 16
"""Reads in flight at once: 64 MiB of buffers at most."""
HEADER = b"rbd diff v1\n"
FINE_BY_OBJECT = 64
"""Up to this many changed objects are compared one by one; more, in one pass over the image."""


class Failure(Exception):
    pass


class Read:
    """One read in flight: librbd's completion thread fills it, the writer waits for it in order."""

    def __init__(self, offset: int, length: int):
        self.offset, self.length = offset, length
        self.data = None
        self.error = 0
        self.done = threading.Event()

    def complete(self, completion, data) -> None:
        self.data = data
        if data is None:
            self.error = completion.get_return_value()
        self.done.set()


class Client:
    def __init__(self, conf: str, timeout: float):
        self.timeout = timeout
        self.cluster = rados.Rados(conffile=conf)
        for option in ("rados_osd_op_timeout", "rados_mon_op_timeout"):
            self.cluster.conf_set(option, str(int(timeout)))
        self.cluster.connect(timeout=int(timeout))
        self.pools = {}

    def image(self, request: dict):
        pool, name = request["image"].split("/", 1)
        if pool not in self.pools:
            self.pools[pool] = self.cluster.open_ioctx(pool)
        return rbd.Image(self.pools[pool], name, snapshot=request["snapshot"], read_only=True)

    def extents(self, image, parent) -> list:
        """The snapshot's allocated extents (a full export) or those changed since `parent`, as (offset,
        length, exists); an extent discarded since `parent` does not exist. The object map names the changed
        objects first (1 ms for 2 GiB here); comparing the image extent by extent takes 21 ms, so where few
        objects changed only they are compared (0.27 ms each)."""
        objects = []
        image.diff_iterate(0, image.size(), parent, lambda offset, length, exists: objects.append(
            (offset, length, exists)), include_parent=True, whole_object=True)
        if len(objects) > FINE_BY_OBJECT:
            objects = [(0, image.size(), True)]
        found = []
        for offset, length, exists in objects:
            if not exists:
                found.append((offset, length, False))
                continue
            image.diff_iterate(offset, length, parent, lambda start, count, there: found.append(
                (start, count, there)), include_parent=True, whole_object=False)
        return found

    def size(self, request: dict) -> dict:
        with self.image(request) as image:
            found = _records(self.extents(image, request["parent"]))
        return {"records": len(found), "data": sum(length for _offset, length, exists in found if exists)}

    def export(self, request: dict, descriptor: int) -> dict:
        """The output owns `descriptor` before anything can fail: an image that did not open had left it open,
        and the node read on until this helper's idle time ended it (60 s for a snapshot that does not exist)."""
        with open(descriptor, "wb", buffering=1 << 16) as output, self.image(request) as image:
            found = self.extents(image, request["parent"])
            output.write(HEADER)
            if request["parent"]:
                _name(output, b"f", request["parent"])
            _name(output, b"t", request["snapshot"])
            output.write(b"s" + struct.pack("<Q", image.size()))
            written = self._extents(image, _records(found), output)
            output.write(b"e")
        return {"done": written}

    def _extents(self, image, records: list, output) -> int:
        """Each record in order: zeros as they are, data read `IN_FLIGHT` reads ahead of the writing."""
        pieces, reads, written = deque(records), deque(), 0
        try:
            while pieces or reads:
                while pieces and len(reads) < IN_FLIGHT:
                    offset, length, exists = pieces.popleft()
                    reads.append((Read(offset, length), exists))
                    if exists:
                        image.aio_read(offset, length, reads[-1][0].complete)
                read, exists = reads.popleft()
                if not exists:
                    output.write(b"z" + struct.pack("<QQ", read.offset, read.length))
                    continue
                self._wait(read)
                output.write(b"w" + struct.pack("<QQ", read.offset, read.length))
                output.write(read.data)
                written += read.length
        finally:
            # librbd writes into the buffers of reads still in flight: they end before the image closes.
            for read, exists in reads:
                if exists:
                    read.done.wait(self.timeout)
        return written

    def _wait(self, read: Read) -> None:
        if not read.done.wait(self.timeout):
            raise Failure(f"no answer from Ceph within {self.timeout:.0f} s for {read.length} bytes at "
                          f"{read.offset}")
        if read.data is None:
            raise Failure(f"a read of {read.length} bytes at {read.offset} failed: {os.strerror(-read.error)}")
        if len(read.data) != read.length:
            raise Failure(f"a read of {read.length} bytes at {read.offset} returned {len(read.data)}")


def _records(found: list) -> list:
    """The extents as the stream's records, each at most `READ_BYTES` (one read; PVC's own reader takes no
    record of more than 1 GiB, zeros included)."""
    return [(start, min(READ_BYTES, offset + length - start), exists) for offset, length, exists in found
            for start in range(offset, offset + length, READ_BYTES)]


def _name(output, tag: bytes, name: str) -> None:
    encoded = name.encode()
    output.write(tag + struct.pack("<I", len(encoded)) + encoded)


def _say(channel: socket.socket, message: dict) -> None:
    channel.send(json.dumps(message).encode())


def serve(channel: socket.socket) -> int:
    first = channel.recv(1 << 16)
    if not first:
        return 0
    settings = json.loads(first)
    try:
        client = Client(settings["conf"], float(settings["timeout"]))
    except Exception as error:
        _say(channel, {"error": f"cannot reach Ceph: {error}"})
        return 1
    _say(channel, {"ready": True})
    channel.settimeout(float(settings["idle"]))
    try:
        while True:
            try:
                message, descriptors, _flags, _address = socket.recv_fds(channel, 1 << 16, 1)
            except socket.timeout:
                return 0
            if not message:
                return 0
            request = json.loads(message)
            try:
                if request["op"] == "export":
                    if len(descriptors) != 1:
                        raise Failure("an export names no output")
                    answer = client.export(request, descriptors.pop())
                else:
                    answer = client.size(request)
            except (Failure, rados.Error, rbd.Error, OSError) as error:
                answer = {"error": str(error) or type(error).__name__}
            finally:
                for descriptor in descriptors:
                    os.close(descriptor)
            _say(channel, answer)
    finally:
        for context in client.pools.values():
            context.close()
        client.cluster.shutdown()


if __name__ == "__main__":
    sys.exit(serve(socket.socket(fileno=sys.stdin.fileno())))
