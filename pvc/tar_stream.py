"""A tar archive read from a stream that cannot seek, one member at a time, with nothing held in memory but a
header and the reader's own chunks.

`tarfile`'s stream mode reads the same way but copies every byte through its own buffers (a join per read),
which costs more than the disk writes it feeds, and reads extended headers whole into memory. Here the
512-byte headers are decoded by `tarfile.TarInfo.frombuf` (ustar, GNU and pax alike, checksum checked), the
extended headers that matter are applied (pax ``path``, ``size``, ``linkpath``; GNU long names), each bounded
by `MAX_EXTENDED_HEADER_BYTES`, and a member's data is handed on in the chunks the stream gives.
"""
import tarfile
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from pvc.errors import InvalidInput

BLOCK = tarfile.BLOCKSIZE
READ_BYTES = 1 << 20
MAX_EXTENDED_HEADER_BYTES = 64 << 10
"""A real long name or pax header is a few hundred bytes."""
_EXTENDED = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
             tarfile.GNUTYPE_LONGLINK)
_NOT_A_TAR = "the upload is not an OVA: it is not a tar archive"


@dataclass
class Member:
    name: str
    size: int
    type: bytes
    linkname: str
    sparse: bool


class TarStream:
    """The members of the tar archive `stream`, in order: iterate for each `Member`, then `read` its data
    (all of it, or what is left is skipped when the next member is asked for)."""

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self._remaining = 0
        self._padding = 0
        self._first = True

    def __iter__(self) -> Iterator[Member]:
        while (member := self._next()) is not None:
            yield member

    def read(self, size: int = READ_BYTES) -> bytes:
        """Up to `size` more bytes of the current member's data, ``b""`` at its end."""
        if not self._remaining:
            return b""
        data = self._stream.read(min(size, self._remaining))
        if not data:
            raise InvalidInput("the OVA ends inside a member's data (truncated)")
        self._remaining -= len(data)
        return data

    def _next(self) -> Member | None:
        while self.read():
            pass
        self._skip(self._padding)
        overrides: dict[str, str] = {}
        while True:
            try:
                header = self._exact(BLOCK, allow_end=True)
            except InvalidInput:
                if self._first:
                    raise InvalidInput(_NOT_A_TAR) from None
                raise
            if header is None or header == bytes(BLOCK):
                if self._first:
                    raise InvalidInput(_NOT_A_TAR)
                return None
            try:
                info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
            except tarfile.HeaderError as error:
                if self._first:
                    raise InvalidInput(_NOT_A_TAR) from None
                raise InvalidInput(f"the OVA's tar structure is broken: {error}") from None
            self._first = False
            if info.size < 0:
                # GNU's base-256 size field can say so: the member's data would never end.
                raise InvalidInput(f"the OVA has a tar header with a negative size ({info.size}); refused")
            if info.type not in _EXTENDED:
                break
            if info.size > MAX_EXTENDED_HEADER_BYTES:
                raise InvalidInput(f"the OVA has a tar extended header of {info.size} bytes; refused")
            data = self._exact(info.size)
            self._skip(-info.size % BLOCK)
            if info.type != tarfile.XGLTYPE:
                overrides.update(_extended(info.type, data))
        size = int(overrides["size"]) if "size" in overrides else info.size
        self._remaining, self._padding = size, -size % BLOCK
        sparse = info.type == tarfile.GNUTYPE_SPARSE or any(key.startswith("GNU.sparse") for key in overrides)
        return Member(overrides.get("path", info.name), size, info.type, overrides.get("linkpath", info.linkname),
                      sparse)

    def _exact(self, size: int, allow_end: bool = False) -> bytes | None:
        chunks, wanted = [], size
        while wanted:
            data = self._stream.read(wanted)
            if not data:
                if allow_end and wanted == size:
                    return None
                raise InvalidInput("the OVA ends inside a tar header (truncated)")
            chunks.append(data)
            wanted -= len(data)
        return b"".join(chunks)

    def _skip(self, size: int) -> None:
        if size:
            self._exact(size)


def _extended(kind: bytes, data: bytes) -> dict[str, str]:
    """What an extended header sets for the next member."""
    if kind == tarfile.GNUTYPE_LONGNAME:
        return {"path": data.rstrip(b"\0").decode("utf-8", "surrogateescape")}
    if kind == tarfile.GNUTYPE_LONGLINK:
        return {"linkpath": data.rstrip(b"\0").decode("utf-8", "surrogateescape")}
    records, position = {}, 0
    while position < len(data) and data[position:position + 1] != b"\0":
        length_text, _, rest = data[position:position + 32].partition(b" ")
        if not length_text.isdigit() or int(length_text) <= len(length_text) + 1:
            raise InvalidInput("the OVA has a malformed pax header")
        record = data[position:position + int(length_text)]
        key, _, value = record[len(length_text) + 1:].rstrip(b"\n").partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        position += int(length_text)
    if "size" in records and not records["size"].isdigit():
        raise InvalidInput("the OVA has a pax header with a malformed size")
    return records

