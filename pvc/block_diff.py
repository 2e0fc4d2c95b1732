"""Volume data in backups: Ceph's ``rbd diff v1`` stream, for every backend.

A full export is the stream of every allocated extent of a snapshot; an incremental one, of the extents that
changed since its parent snapshot. Ceph writes and applies it itself (``rbd export-diff``/``import-diff``); the
file backend writes and applies it here. The records (little-endian)::

    "rbd diff v1\\n"
    f <u32 length> <name>        the snapshot it starts from (incremental only)
    t <u32 length> <name>        the snapshot it ends at
    s <u64 size>                 the volume's size at that snapshot
    w <u64 offset> <u64 length> <data>
    z <u64 offset> <u64 length>  zeros (a discarded extent)
    e                            the end
"""
from __future__ import annotations

import struct
from typing import BinaryIO, Iterator

from pvc.errors import InvalidInput

HEADER = b"rbd diff v1\n"
MAX_NAME = 4096
MAX_EXTENT = 1 << 30
EXTENT_OVERHEAD = 1 + 8 + 8
"""The bytes a ``w`` record adds to its data."""
STREAM_OVERHEAD = len(HEADER) + 2 * (1 + 4 + MAX_NAME) + 1 + 8 + 1
"""At most the bytes of a stream's header and end."""


class DiffWriter:
    def __init__(self, output: BinaryIO, from_snapshot: str | None, to_snapshot: str, size_bytes: int):
        self._output = output
        output.write(HEADER)
        if from_snapshot:
            self._name(b"f", from_snapshot)
        self._name(b"t", to_snapshot)
        output.write(b"s" + struct.pack("<Q", size_bytes))

    def _name(self, tag: bytes, name: str) -> None:
        encoded = name.encode()
        self._output.write(tag + struct.pack("<I", len(encoded)) + encoded)

    def data(self, offset: int, data: bytes) -> None:
        self._output.write(b"w" + struct.pack("<QQ", offset, len(data)))
        self._output.write(data)

    def zero(self, offset: int, length: int) -> None:
        self._output.write(b"z" + struct.pack("<QQ", offset, length))

    def end(self) -> None:
        self._output.write(b"e")


class DiffHeader:
    def __init__(self, from_snapshot: str | None, to_snapshot: str | None, size_bytes: int | None):
        self.from_snapshot, self.to_snapshot, self.size_bytes = from_snapshot, to_snapshot, size_bytes


def read(stream: BinaryIO, what: str) -> tuple[DiffHeader, Iterator[tuple[str, int, int, bytes | None]]]:
    """The stream's header and its extents (``("w", offset, length, data)`` or ``("z", offset, length, None)``);
    anything malformed or truncated is `InvalidInput` naming `what`."""
    if _exact(stream, len(HEADER), what) != HEADER:
        raise InvalidInput(f"{what} is not an rbd diff v1 stream")
    header = DiffHeader(None, None, None)
    while True:
        tag = _exact(stream, 1, what)
        if tag in (b"f", b"t"):
            length, = struct.unpack("<I", _exact(stream, 4, what))
            if length > MAX_NAME:
                raise InvalidInput(f"{what}: a snapshot name of {length} bytes")
            name = _exact(stream, length, what).decode(errors="replace")
            if tag == b"f":
                header.from_snapshot = name
            else:
                header.to_snapshot = name
        elif tag == b"s":
            header.size_bytes, = struct.unpack("<Q", _exact(stream, 8, what))
        else:
            break
    if header.size_bytes is None:
        raise InvalidInput(f"{what} does not say the volume's size")

    def extents(first: bytes) -> Iterator[tuple[str, int, int, bytes | None]]:
        tag = first
        while tag != b"e":
            if tag not in (b"w", b"z"):
                raise InvalidInput(f"{what}: unknown record {tag!r}")
            offset, length = struct.unpack("<QQ", _exact(stream, 16, what))
            if length > MAX_EXTENT or offset + length > header.size_bytes:
                raise InvalidInput(f"{what}: an extent of {length} bytes at {offset} beyond the volume's "
                                   f"{header.size_bytes} bytes")
            yield ("w", offset, length, _exact(stream, length, what)) if tag == b"w" else ("z", offset, length, None)
            tag = _exact(stream, 1, what)
        if stream.read(1):
            raise InvalidInput(f"{what} goes on after its end record")
    return header, extents(tag)


def _exact(stream: BinaryIO, count: int, what: str) -> bytes:
    data = stream.read(count)
    if len(data) != count:
        raise InvalidInput(f"{what} is truncated")
    return data
