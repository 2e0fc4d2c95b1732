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
"""
from __future__ import annotations

import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any, Iterator

from pvc import bulk
from pvc.errors import InvalidInput, NotFound, PVCError
from pvc.hookspecs import StorageBackend
from pvc.node.backups import Hashing
from pvc.node.upload_stream import VerifiedStream, receive_head

STAGE_PREFIX = ".mirror-"
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
        path = self._path(token)
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
            with bulk.SpooledSource(str(self._path(token))) as source:
                return bulk.stream_upload(ticket["address"], ticket["token"], source, ticket["checksum"],
                                          SEND_TIMEOUT_S, tls=bulk.client_context(ticket, tls_ca))
        finally:
            self.discard(token)

    def discard(self, token: str) -> None:
        self._path(token).unlink(missing_ok=True)

    def _remove_abandoned(self) -> None:
        """Stages older than `STAGE_LIFETIME_S` were left by a coordinator that died before it pushed them."""
        cutoff = time.time() - STAGE_LIFETIME_S
        for path in self._directory.glob(f"{STAGE_PREFIX}*"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
            except FileNotFoundError:
                pass

    def _path(self, token: str) -> Path:
        if not isinstance(token, str) or len(token) != 32 or any(c not in "0123456789abcdef" for c in token):
            raise InvalidInput(f"invalid stage token {token!r}")
        return self._directory / f"{STAGE_PREFIX}{token}"


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
            raise InvalidInput("the mirror stream holds more than its volumes' streams")


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
        pool, name = volume["volume"].split("/", 1)
        if self._backend.volume_size(pool, name) is None:
            raise NotFound(f"volume {pool}/{name} to receive the mirror into does not exist")
        label = f"the mirror stream of {volume['volume']}@{manifest['snapshot']}"
        reader.limit = volume["bytes"]
        hashing = Hashing(reader)
        self._backend.volume_apply_diff(pool, name, hashing, label)
        hashing.read()
        if hashing.bytes != volume["bytes"] or hashing.sha256.hexdigest() != volume["sha256"]:
            raise InvalidInput(f"{label} does not match what was announced ({hashing.bytes} of {volume['bytes']} "
                               "bytes, or another checksum)")
