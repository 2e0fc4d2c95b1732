"""A VM snapshot moving between two clusters over the receiving cluster's upload channel (`pvc.bulk`).

On the sending cluster a storage node writes the snapshot's volumes as ``rbd diff v1`` streams (`pvc.block_diff`:
whole, or the changes since the parent snapshot the receiver holds) one after the other into a staging file, so
that the stream's size and checksum can be declared before its first byte, as the channel requires
(`MirrorStages`); then it sends that file under the ticket the receiving coordinator obtained.

On the receiving cluster a storage node applies the streams as they arrive, each to its volume, checking each
one's byte count and SHA-256 and the whole stream's checksum, then snapshots every volume under the snapshot's
name (`MirrorReceiveJob`). The volumes it writes belong to a mirror that cannot run, and its coordinator recorded
the send's intent first: a failed or cut-off send is undone there (the volumes return to the parent snapshot, or
go), never here.

The same staged file is what a streamed export sends to a client (`send_stage`, under a download ticket of the
upload channel), so `pvc vm snapshot export VM SNAPSHOT -` writes the mirror's stream behind its manifest. An
import streamed from a client comes back the other way: a chain of such streams, checked into a stage of its
own (`receive_stage`), then applied link by link with the same checks as a mirror send
(`MirrorStages.apply_chain`).
"""
from __future__ import annotations

import os
import secrets
import socket
import ssl
import time
from pathlib import Path
from typing import Any, Iterator

from pvc import bulk
from pvc.errors import InvalidInput, NotFound, PVCError
from pvc.hookspecs import StorageBackend
from pvc.node.backups import Deadline, Hashing
from pvc.node.upload_stream import VerifiedStream, receive_head

STAGE_PREFIX = ".mirror-"
IMPORT_PREFIX = ".import-"
"""A stage a client streamed in for an import: never one a send or a download uses, whatever token it is given."""
SEND_TIMEOUT_S = 30.0
STAGE_LIFETIME_S = 3600.0
"""A stage is pushed seconds after it is written; one this old was abandoned (pvcnoded's start removes the rest)."""


class MirrorStages:
    """This node's staged sends, files in its upload staging directory named by a token."""

    def __init__(self, backend: StorageBackend, directory: Path):
        self._backend = backend
        self._directory = directory

    def stage(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Write the streams of `manifest` (``snapshot``, ``parent``, ``volumes``: sizes by ``POOL/VOLUME``);
        the stage's token, size and checksum, and per volume its stream's byte count and SHA-256."""
        if getattr(self._backend, "snapshot_export", None) is None:
            raise InvalidInput("this node's storage backend cannot export snapshots")
        self._remove_abandoned()
        token = secrets.token_hex(16)
        path = self.path(token)
        volumes = []
        try:
            with open(path, "xb", buffering=1 << 20) as output:
                for volume, size_bytes in manifest["volumes"].items():
                    pool, name = volume.split("/", 1)
                    hashing = Hashing(output)
                    self._backend.snapshot_export(pool, name, manifest["snapshot"], manifest["parent"], hashing)
                    volumes.append({"volume": volume, "size_bytes": size_bytes, "bytes": hashing.bytes,
                                    "sha256": hashing.sha256.hexdigest()})
            with open(path, "rb") as staged:
                size = os.fstat(staged.fileno()).st_size
                checksum = bulk.checksum_of_file(staged, 0, size)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return {"stage": token, "size_bytes": size, "checksum": checksum, "volumes": volumes}

    def push(self, token: str, ticket: dict[str, Any], tls_ca: str | None) -> dict[str, Any]:
        """Send stage `token` under the receiving cluster's `ticket`; the receiving node's answer. The stage goes
        with its one use, whether or not the coordinator that asked is still there to say so."""
        try:
            with bulk.SpooledSource(str(self.path(token))) as source:
                return bulk.stream_upload(ticket["address"], ticket["token"], source, ticket["checksum"],
                                          SEND_TIMEOUT_S, tls=bulk.client_context(ticket, tls_ca))
        finally:
            self.discard(token)

    def reserve(self) -> str:
        """A new import stage's token, for a stream a client sends (`receive_stage`, `import_path`)."""
        self._remove_abandoned()
        return secrets.token_hex(16)

    def apply_chain(self, token: str, links: list[dict[str, Any]], deadline: Deadline) -> dict[str, int]:
        """Make the volumes of a streamed import from stage `token` (checked by `receive_stage`): the volumes of
        `links` (a checked chain, renamed to the new volumes, each naming its exported ``source``) are created
        for the first link, and every link's streams applied in turn, each checked against its byte count and
        SHA-256; the stage must end with the last. Returns the new volumes' sizes. On any failure, the `deadline`
        passing among them, the volumes made are removed; the stage goes either way, with its one use."""
        made: list[tuple[str, str]] = []
        try:
            try:
                staged = open(self.path(token, IMPORT_PREFIX), "rb")
            except FileNotFoundError:
                raise NotFound("the streamed import's data is not on this node (used already, or abandoned)") \
                    from None
            with staged:
                bounded = deadline.bounded(staged)
                reader = _PieceReader(iter(lambda: bounded.read(bulk.CHUNK_BYTES), b""))
                for number, link in enumerate(links, start=1):
                    for volume in link["volumes"]:
                        pool, name = volume["volume"].split("/", 1)
                        if number == 1:
                            if self._backend.volume_size(pool, name) is not None:
                                raise InvalidInput(f"volume {pool}/{name} exists in the storage already")
                            deadline.check()
                            self._backend.volume_create(pool, name, volume["size_bytes"])
                            made.append((pool, name))
                        _apply(self._backend, reader, volume, f"the stream of {volume['source']} in export "
                                                              f"{number} ({link['vm']}@{link['snapshot']})")
                reader.finish()
            finished = getattr(self._backend, "import_finished", None)
            for pool, name in made:
                if finished is not None:
                    finished(pool, name)
            return {f"{pool}/{name}": self._backend.volume_size(pool, name) for pool, name in made}
        except BaseException:
            for pool, name in made:
                self._backend.volume_remove(pool, name)
            raise
        finally:
            self.path(token, IMPORT_PREFIX).unlink(missing_ok=True)

    def discard(self, token: str, prefix: str = STAGE_PREFIX) -> None:
        self.path(token, prefix).unlink(missing_ok=True)

    def _remove_abandoned(self) -> None:
        """Stages older than `STAGE_LIFETIME_S` were left by a coordinator that died before it pushed them."""
        cutoff = time.time() - STAGE_LIFETIME_S
        for path in [*self._directory.glob(f"{STAGE_PREFIX}*"), *self._directory.glob(f"{IMPORT_PREFIX}*")]:
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
            except FileNotFoundError:
                pass

    def path(self, token: str, prefix: str = STAGE_PREFIX) -> Path:
        if not isinstance(token, str) or len(token) != 32 or any(c not in "0123456789abcdef" for c in token):
            raise InvalidInput(f"invalid stage token {token!r}")
        return self._directory / f"{prefix}{token}"


def receive_stage(connection: socket.socket, ticket: Any) -> dict[str, Any]:
    """Receive a client's streamed import into the staging file of its `ticket`, checked against the size and
    checksum the coordinator was told; a stream that breaks off or does not match leaves no file."""
    head = receive_head(connection, ticket.size_bytes)
    stream = VerifiedStream(connection, ticket.size_bytes, ticket.checksum, head)
    try:
        with open(ticket.stage_into, "xb") as staged:
            for piece in stream:
                staged.write(piece)
    except BaseException:
        Path(ticket.stage_into).unlink(missing_ok=True)
        raise
    finally:
        stream.close()
    return {"bytes": ticket.size_bytes}


def send_stage(connection: socket.socket, ticket: Any) -> None:
    """Send the staged file of a download `ticket` to the client, then remove it: the ticket's one use. By
    sendfile(2) in the clear; through Python's buffers over TLS, which must encrypt them."""
    try:
        with open(ticket.download, "rb") as staged:
            if os.fstat(staged.fileno()).st_size != ticket.size_bytes:
                raise InvalidInput("the staged export changed size; nothing was sent")
            sent = 0
            while sent < ticket.size_bytes:
                length = min(bulk.CHUNK_BYTES, ticket.size_bytes - sent)
                if isinstance(connection, ssl.SSLSocket):
                    connection.sendall(os.pread(staged.fileno(), length, sent))
                    sent += length
                else:
                    count = connection.sendfile(staged, sent, length)
                    if not count:
                        raise InvalidInput("the staged export ended early; nothing more was sent")
                    sent += count
    finally:
        Path(ticket.download).unlink(missing_ok=True)


class _PieceReader:
    """The verified stream's pieces as a file that reads at most `limit` bytes before `limit` is set again."""

    def __init__(self, pieces: Iterator[bytearray]):
        self._pieces = pieces
        self._buffer = memoryview(b"")
        self.limit = 0

    def read(self, count: int = -1) -> bytes:
        wanted = self.limit if count is None or count < 0 else min(count, self.limit)
        chunks = []
        while wanted:
            if not self._buffer:
                piece = next(self._pieces, None)
                if piece is None:
                    break
                self._buffer = memoryview(piece)
            taken = self._buffer[:wanted]
            chunks.append(bytes(taken))
            self._buffer = self._buffer[len(taken):]
            wanted -= len(taken)
            self.limit -= len(taken)
        return b"".join(chunks)

    def finish(self) -> None:
        """Read the stream to its end, where the whole stream's checksum is checked."""
        if self._buffer or next(self._pieces, None) is not None:
            raise InvalidInput("the stream holds more than its volumes' streams")


class MirrorReceiveJob:
    """One received send: each volume's stream applied, checked, and the volume snapshotted."""

    def __init__(self, backend: StorageBackend, ticket: Any):
        self._backend = backend
        self._ticket = ticket

    def run(self, connection: socket.socket) -> dict[str, Any]:
        ticket, manifest = self._ticket, self._ticket.mirror
        head = receive_head(connection, ticket.size_bytes)
        stream = VerifiedStream(connection, ticket.size_bytes, ticket.checksum, head)
        try:
            reader = _PieceReader(iter(stream))
            for volume in manifest["volumes"]:
                self._apply(reader, manifest, volume)
            reader.finish()
        finally:
            stream.close()
        for volume in manifest["volumes"]:
            pool, name = volume["volume"].split("/", 1)
            try:
                self._backend.snapshot_create(pool, name, manifest["snapshot"])
            except PVCError:
                # Ceph's import-diff leaves the snapshot the stream ends at: taken again, now that all is checked
                self._backend.snapshot_remove(pool, name, manifest["snapshot"])
                self._backend.snapshot_create(pool, name, manifest["snapshot"])
        return {"vm": manifest["vm"], "snapshot": manifest["snapshot"],
                "sizes": {volume["volume"]: self._backend.volume_size(*volume["volume"].split("/", 1))
                          for volume in manifest["volumes"]}}

    def _apply(self, reader: _PieceReader, manifest: dict[str, Any], volume: dict[str, Any]) -> None:
        _apply(self._backend, reader, volume, f"the mirror stream of {volume['volume']}@{manifest['snapshot']}")


def _apply(backend: StorageBackend, reader: _PieceReader, volume: dict[str, Any], label: str) -> None:
    """Apply one volume's stream, the next `volume["bytes"]` of `reader`, checking its count and SHA-256."""
    pool, name = volume["volume"].split("/", 1)
    if backend.volume_size(pool, name) is None:
        raise NotFound(f"volume {pool}/{name} to receive {label} into does not exist")
    reader.limit = volume["bytes"]
    hashing = Hashing(reader)
    backend.volume_apply_diff(pool, name, hashing, label)
    hashing.read()
    if hashing.bytes != volume["bytes"] or hashing.sha256.hexdigest() != volume["sha256"]:
        raise InvalidInput(f"{label} does not match what was announced ({hashing.bytes} of {volume['bytes']} "
                           "bytes, or another checksum)")
