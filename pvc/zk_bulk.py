"""Many znodes read in one ZooKeeper request, and their watches set in one: a cold cache's load.

kazoo reads one znode per request. A coordinator starting against 10,000 VMs reads 40,000 znodes, and kazoo's
path for a request (its queue, its lock, its answer object, a callback per answer) took 4-5 s of CPU for them
alone. ZooKeeper (3.6 and later) answers a `multiRead` (opcode 22) of many getData operations in one request,
each read answered or failed on its own. The server drops a multiRead's watch flags, so the watches are set
afterwards with `setWatches` (opcode 101, what clients send after a reconnection), given the zxid the reads
were answered at: the server fires at once for a znode changed (or deleted, or created) since then, and
keeps a watch on the rest. Nothing that changes after a read goes unseen.

kazoo has neither request, so both are sent through its connection as any request is (`KazooClient._call`),
and each watch function is entered in kazoo's own registry before its watch is set, where the watch event
finds it, as kazoo does for its own reads. kazoo enters its own from its connection thread, the one that also
empties the registry when a session expires; these are entered from another thread, so the registry needs the
lock `BulkWatchClient` adds: without it, an expiry met the registry growing ("dictionary changed size during
iteration"), kazoo's connection thread died, and the coordinator stayed cut off from ZooKeeper for good.
"""
import threading
from typing import Any, Callable

from kazoo.client import KazooClient
from kazoo.exceptions import EXCEPTIONS
from kazoo.interfaces import IAsyncResult
from kazoo.protocol.paths import _prefix_root
from kazoo.protocol.serialization import (MultiHeader, int_struct, long_struct, multiheader_struct, read_buffer,
                                          stat_struct, write_string)
from kazoo.protocol.states import ZnodeStat

GET_DATA = 4
ERROR = -1
WATCHES_PER_REQUEST = 2_000
"""Paths per setWatches request: ZooKeeper refuses a request over its 1 MiB `jute.maxbuffer`, and the Java
client splits its own at 128 KiB; 2,000 paths of a VM's keys stay near 100 KiB."""


class BulkWatchClient(KazooClient):
    """A kazoo client whose watch registry may be added to from outside its connection thread (`watch`)."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.watchers_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def _reset_watchers(self) -> None:
        with self.watchers_lock:
            super()._reset_watchers()


class MultiRead:
    """getData of each path; its answer is, per path in order, (data, ZnodeStat) or the KazooException that
    read met, and the server's zxid when it answered (`answered_at`)."""

    type = 22

    def __init__(self, client: KazooClient, paths: list[str]):
        self.client = client
        self.paths = [_prefix_root(client.chroot, path) for path in paths]
        self.answered_at = 0

    def serialize(self) -> bytes:
        parts = [MultiHeader(GET_DATA, False, -1).serialize() + write_string(path) + b"\x00" for path in self.paths]
        return b"".join(parts) + multiheader_struct.pack(-1, True, -1)

    def deserialize(self, data: bytes, offset: int) -> list[Any]:
        """Called by kazoo's connection thread right after it took the answer's zxid from its header."""
        self.answered_at = self.client.last_zxid
        results: list[Any] = []
        while True:
            kind, done, _error = multiheader_struct.unpack_from(data, offset)
            offset += multiheader_struct.size
            if done:
                return results
            if kind == GET_DATA:
                value, offset = read_buffer(data, offset)
                results.append((value, ZnodeStat._make(stat_struct.unpack_from(data, offset))))
                offset += stat_struct.size
            elif kind == ERROR:
                results.append(EXCEPTIONS[int_struct.unpack_from(data, offset)[0]]())
                offset += int_struct.size
            else:
                raise ValueError(f"a multiRead answered an operation of type {kind}")


class SetWatches:
    """Data watches on `present` paths (fired at once by a change after `relative_zxid`) and existence watches
    on `absent` ones (fired at once if one exists now)."""

    type = 101

    def __init__(self, client: KazooClient, relative_zxid: int, present: list[str], absent: list[str]):
        self.relative_zxid = relative_zxid
        self.present = [_prefix_root(client.chroot, path) for path in present]
        self.absent = [_prefix_root(client.chroot, path) for path in absent]

    def serialize(self) -> bytes:
        return b"".join([long_struct.pack(self.relative_zxid), _strings(self.present), _strings(self.absent),
                         _strings([])])

    @staticmethod
    def deserialize(_data: bytes, _offset: int) -> None:
        return None


def _strings(paths: list[str]) -> bytes:
    return int_struct.pack(len(paths)) + b"".join(write_string(path) for path in paths)


def read(client: KazooClient, paths: list[str]) -> tuple[IAsyncResult, MultiRead]:
    """Read `paths` in one request; the answer (see `MultiRead`) comes to the result, like kazoo's own."""
    request = MultiRead(client, paths)
    answer = client.handler.async_result()
    client._call(request, answer)
    return answer, request


def watch(client: BulkWatchClient, relative_zxid: int, watches: list[tuple[str, bool, Callable]]) -> list[IAsyncResult]:
    """Set a watch per (path, present, function): a data watch where the read found the znode, an existence
    watch where it did not; each function is registered with kazoo first, as a watch kazoo set itself would
    be, so that an event fired at once finds it. One answer per request sent."""
    answers = []
    for first in range(0, len(watches), WATCHES_PER_REQUEST):
        batch = watches[first:first + WATCHES_PER_REQUEST]
        with client.watchers_lock:
            for path, _present, function in batch:
                client._data_watchers[_prefix_root(client.chroot, path)].add(function)
        answer = client.handler.async_result()
        client._call(SetWatches(client, relative_zxid, [path for path, present, _ in batch if present],
                                [path for path, present, _ in batch if not present]), answer)
        answers.append(answer)
    return answers
