"""An OVA read as it arrives: a tar stream (`pvc.tar_stream`), never seeked, every member checked before it is
used.

An OVA is a tar whose first member is the OVF descriptor, then (optionally) a manifest and a certificate,
then the files in References order (DSP0243). So the descriptor is parsed and checked before any disk byte
arrives, and each disk is staged as its member streams past. Guarantees:

* only regular files with plain relative names are read: absolute paths, ``..``, links, devices, directories
  and sparse members are refused, as is a member larger than the archive itself or an oversized tar header;
* exactly one descriptor, and it is the first member;
* a manifest, in either spelling exporters write (VMware's ``SHA256(name)= hex``, VirtualBox's BSD-style
  ``SHA256 (name) = hex``; SHA1, SHA256 or SHA512), has every digest it lists verified: a mismatch, another
  algorithm, or an entry for a member the archive lacks refuses the import naming the file. Members it does not
  list (some exporters leave out the descriptor) are accepted knowingly and reported: the manifest status is
  ``verified``, ``partial`` (with the uncovered files named) or ``absent``; a certificate is recorded, not
  verified;
* chunked files (``href.000000000``, ...) are reassembled and gzip files decompressed as streams, into a
  staging file per disk (qemu-img cannot convert a streamOptimized VMDK from a pipe: its grain directory is
  at its end): memory stays bounded by a few buffers whatever the disks' sizes;
* each staged disk is handed to `import_disk` in one background thread while the next member streams in, and
  its staging file is removed afterwards; on any failure every staging file is removed before the error
  (one `InvalidInput` line naming what is wrong) reaches the caller.
"""
import hashlib
import os
import re
import tarfile
import tempfile
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable

from pvc import ovf
from pvc.errors import InvalidInput
from pvc.tar_stream import Member, TarStream

READ_BYTES = 1 << 20
MAX_MANIFEST_BYTES = 1 << 20
MAX_CERTIFICATE_BYTES = 64 << 10
STAGING_PREFIX = ".stage-"
STAGING_RESERVE_BYTES = 256 << 20
"""What a staged disk leaves free on the staging filesystem at least; past it the upload is refused."""
STAGING_CHECK_BYTES = 64 << 20
"""Bytes staged between two looks at the staging filesystem's free space (fewer as it fills)."""
MANIFEST_ALGORITHMS = ("sha1", "sha256", "sha512")
_MANIFEST_LINE = re.compile(r"([A-Za-z0-9-]+)\s*\((.+)\)\s*=\s*(\S+)")
_REGULAR_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE)


@dataclass(frozen=True)
class OvaContents:
    """What the archive held besides its disks."""

    appliance: ovf.Appliance
    manifest: str
    """``verified (SHA256)`` (the algorithms used), ``partial (SHA256)`` when members are not covered, or
    ``absent``."""
    unverified_files: list[str]
    """The members no manifest digest covers (every member when the manifest is absent), in archive order."""
    certificate: str | None
    skipped_files: list[str]
    """Referenced files that are not disk images (an NVRAM, an ISO): checked, not imported."""


def read_ova(stream: BinaryIO, archive_size: int, staging_directory: Path,
             on_descriptor: Callable[[ovf.Appliance], None],
             import_disk: Callable[[ovf.OvfDisk, Path], None]) -> OvaContents:
    """Read the OVA from `stream` (`archive_size` bytes), calling `on_descriptor` once the descriptor is
    parsed (before any disk arrives) and `import_disk` with each disk's staged image (decompressed and
    reassembled) in a background thread; it must not keep the file. Raises `InvalidInput`."""
    reader = _OvaReader(archive_size, staging_directory, on_descriptor, import_disk)
    try:
        return reader.read(stream)
    finally:
        reader.close()


class _OvaReader:
    def __init__(self, archive_size: int, staging_directory: Path,
                 on_descriptor: Callable[[ovf.Appliance], None], import_disk: Callable[[ovf.OvfDisk, Path], None]):
        self._archive_size = archive_size
        self._staging = staging_directory
        self._on_descriptor = on_descriptor
        self._import_disk = import_disk
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="ova-import")
        self._pending: Future | None = None
        self._staged: list[Path] = []
        self._manifest: dict[str, tuple[str, str]] | None = None
        self._digests: dict[str, dict[str, str]] = {}
        self._certificate: str | None = None
        self._appliance: ovf.Appliance | None = None
        self._current: _FileInProgress | None = None
        self._done: set[str] = set()

    def read(self, stream: BinaryIO) -> OvaContents:
        archive = TarStream(stream)
        for index, member in enumerate(archive):
            self._member(archive, index, member)
        if self._appliance is None:
            raise InvalidInput("the OVA holds no OVF descriptor")
        self._finish_file()
        self._wait_for_import()
        return self._contents()

    def close(self) -> None:
        """Wait for the import in progress, if any, and remove every staging file (the one being written
        closed first: left open by a refusal, it kept its space, and its filesystem busy, after the unlink)."""
        if self._pending is not None:
            self._pending.exception()
        self._worker.shutdown(wait=True)
        if self._current is not None:
            self._current.close()
        for path in self._staged:
            path.unlink(missing_ok=True)

    def _member(self, archive: TarStream, index: int, member: Member) -> None:
        name = _checked_name(member, self._archive_size)
        if name.lower().endswith(".ovf"):
            if index:
                raise InvalidInput(f"the OVA holds a second descriptor '{name}'; exactly one is allowed")
            data = _read_small(archive, member, ovf.MAX_DESCRIPTOR_BYTES, "descriptor")
            self._appliance = ovf.parse(data)
            self._digests[name] = _hashes(data, MANIFEST_ALGORITHMS)
            self._on_descriptor(self._appliance)
            return
        if self._appliance is None:
            raise InvalidInput(f"the OVA's first member '{name}' is not an OVF descriptor (.ovf); an OVA starts "
                               "with its descriptor")
        if name.lower().endswith(".mf"):
            self._read_manifest(name, _read_small(archive, member, MAX_MANIFEST_BYTES, "manifest"))
        elif name.lower().endswith(".cert"):
            data = _read_small(archive, member, MAX_CERTIFICATE_BYTES, "certificate")
            self._digests[name] = _hashes(data, MANIFEST_ALGORITHMS)
            self._certificate = data.decode("ascii", "replace")
        else:
            self._file_member(archive, name, member)

    def _read_manifest(self, name: str, data: bytes) -> None:
        if self._manifest is not None:
            raise InvalidInput(f"the OVA holds a second manifest '{name}'")
        manifest = {}
        for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), start=1):
            if not line.strip():
                continue
            match = _MANIFEST_LINE.fullmatch(line.strip())
            if match is None:
                raise InvalidInput(f"line {number} of the manifest '{name}' is not 'SHA256(file)= hex' or "
                                   "'SHA256 (file) = hex'")
            algorithm, member, digest = match.group(1).lower(), match.group(2), match.group(3).lower()
            if algorithm not in MANIFEST_ALGORITHMS:
                raise InvalidInput(f"the manifest '{name}' gives '{member}' a {match.group(1)} digest; only "
                                   f"{', '.join(a.upper() for a in MANIFEST_ALGORITHMS)} are checked, so it is "
                                   "refused")
            if not re.fullmatch(r"[0-9a-f]+", digest) or len(digest) != hashlib.new(algorithm).digest_size * 2:
                raise InvalidInput(f"the manifest '{name}' gives '{member}' a {match.group(1)} digest that is not "
                                   f"{hashlib.new(algorithm).digest_size * 2} hexadecimal digits")
            if member in manifest:
                raise InvalidInput(f"the manifest '{name}' lists '{member}' twice")
            manifest[member] = (algorithm, digest)
        if not manifest:
            raise InvalidInput(f"the manifest '{name}' lists no file")
        self._manifest = manifest

    def _file_member(self, archive: TarStream, name: str, member: Member) -> None:
        """A member holding a referenced file, whole or one of its numbered parts, streamed into its sink."""
        file, part = self._referenced(name)
        if self._current is None or self._current.file is not file:
            self._finish_file()
            if file.file_id in self._done:
                raise InvalidInput(f"the OVA holds file '{file.href}' twice or its parts out of order")
            self._current = self._start_file(file)
        if part != self._current.parts:
            raise InvalidInput(f"the OVA holds part {part} of '{file.href}' where part {self._current.parts} was "
                               "due")
        algorithms = self._algorithms_for(name)
        hashes = [hashlib.new(algorithm) for algorithm in algorithms]
        while chunk := archive.read(READ_BYTES):
            for each in hashes:
                each.update(chunk)
            self._current.write(chunk)
        self._digests[name] = {algorithm: each.hexdigest() for algorithm, each in zip(algorithms, hashes)}
        self._current.parts += 1
        self._current.size += member.size

    def _referenced(self, name: str) -> tuple[ovf.OvfFile, int]:
        for file in self._appliance.files:
            if file.chunk_size_bytes is None and name == file.href:
                return file, 0
            if file.chunk_size_bytes is not None and name.startswith(f"{file.href}.") \
                    and re.fullmatch(r"\d{9}", name[len(file.href) + 1:]):
                return file, int(name[len(file.href) + 1:])
        raise InvalidInput(f"the OVA holds '{name}', which its descriptor does not reference")

    def _algorithms_for(self, name: str) -> tuple[str, ...]:
        """The digest the manifest wants for a member (none when it does not list it); every one a manifest may
        use while none has come yet."""
        if self._manifest is None:
            return MANIFEST_ALGORITHMS
        if name not in self._manifest:
            return ()
        return (self._manifest[name][0],)

    def _start_file(self, file: ovf.OvfFile) -> "_FileInProgress":
        disk = next((disk for disk in self._appliance.disks if disk.file is file), None)
        path = None
        if disk is not None:
            self._wait_for_import()
            descriptor, name = tempfile.mkstemp(dir=self._staging, prefix=STAGING_PREFIX)
            os.close(descriptor)
            path = Path(name)
            self._staged.append(path)
        return _FileInProgress(file, disk, path, _staging_limit(disk))

    def _finish_file(self) -> None:
        current, self._current = self._current, None
        if current is None:
            return
        current.finish()
        self._done.add(current.file.file_id)
        if current.disk is not None:
            self._verify_manifest_now(current)
            self._pending = self._worker.submit(self._import_and_unstage, current.disk, current.path)

    def _verify_manifest_now(self, current: "_FileInProgress") -> None:
        """Check a disk's members against a manifest read already, before its image is handed on."""
        if self._manifest is not None:
            for name in current.file.member_names(current.parts):
                if name in self._manifest:
                    self._check_digest(name)

    def _import_and_unstage(self, disk: ovf.OvfDisk, path: Path) -> None:
        try:
            self._import_disk(disk, path)
        finally:
            path.unlink(missing_ok=True)

    def _wait_for_import(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _contents(self) -> OvaContents:
        appliance = self._appliance
        for file in appliance.files:
            if file.file_id not in self._done:
                raise InvalidInput(f"the descriptor references '{file.href}' but the OVA does not contain it")
        members = [name for name in self._digests if not name.lower().endswith(".cert")]
        if self._manifest is None:
            manifest, uncovered = "absent", members
        else:
            for name in self._manifest:
                if name not in self._digests:
                    raise InvalidInput(f"the manifest lists '{name}', which the OVA does not contain")
            for name in self._manifest:
                self._check_digest(name)
            uncovered = [name for name in members if name not in self._manifest]
            algorithms = ", ".join(sorted({algorithm.upper() for algorithm, _digest in self._manifest.values()}))
            manifest = f"{'partial' if uncovered else 'verified'} ({algorithms})"
        disk_files = {disk.file.file_id for disk in appliance.disks if disk.file is not None}
        return OvaContents(appliance, manifest, uncovered, self._certificate,
                           [file.href for file in appliance.files if file.file_id not in disk_files])

    def _check_digest(self, name: str) -> None:
        if name not in self._manifest:
            raise InvalidInput(f"the manifest has no checksum for '{name}'")
        algorithm, expected = self._manifest[name]
        if self._digests[name].get(algorithm) != expected:
            raise InvalidInput(f"the manifest's {algorithm.upper()} checksum of '{name}' does not match its "
                               "content; the OVA is corrupt or was altered")


class _FileInProgress:
    """One referenced file as its members arrive: decompressed (gzip) and written to its staging file when it
    is a disk, only counted when it is not."""

    def __init__(self, file: ovf.OvfFile, disk: ovf.OvfDisk | None, path: Path | None, limit: int):
        self.file, self.disk, self.path = file, disk, path
        self.parts = 0
        self.size = 0
        self._limit = limit
        self._written = 0
        self._inflate = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS) if file.compression == "gzip" else None
        self._descriptor = os.open(path, os.O_WRONLY) if path is not None else None
        self._next_room_check = 0

    def _check_room(self) -> None:
        """Refuse the file once the staging filesystem (often the node's root) nears full: a disk's limit
        follows its declared capacity, which a pool on Ceph can hold however large the node's own disk is, and
        gzip'd zeros had expanded into it until nothing was left."""
        filesystem = os.statvfs(self.path.parent)
        free = filesystem.f_bavail * filesystem.f_frsize
        if free < STAGING_RESERVE_BYTES:
            raise InvalidInput(f"file '{self.file.href}' does not fit the node's staging space ({free} bytes "
                               f"free after {self._written} bytes of it); refused")
        self._next_room_check = self._written + min(STAGING_CHECK_BYTES, free - STAGING_RESERVE_BYTES)

    def write(self, chunk: bytes) -> None:
        if self._descriptor is None:
            return
        if self._inflate is None:
            self._append(chunk)
            return
        if self._inflate.eof:
            raise InvalidInput(f"file '{self.file.href}' has data after the end of its gzip stream")
        try:
            while chunk:
                self._append(self._inflate.decompress(chunk, READ_BYTES))
                chunk = self._inflate.unconsumed_tail
        except zlib.error as error:
            raise InvalidInput(f"file '{self.file.href}' is not valid gzip data: {error}") from None

    def _append(self, data: bytes) -> None:
        self._written += len(data)
        if self._written > self._limit:
            raise InvalidInput(f"file '{self.file.href}' holds more than {self._limit} bytes, more than a disk of "
                               f"{self.disk.capacity_bytes} bytes can need; refused")
        if self._written >= self._next_room_check:
            self._check_room()
        with memoryview(data) as view:
            done = 0
            while done < len(view):
                done += os.write(self._descriptor, view[done:])

    def close(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None

    def finish(self) -> None:
        """Check the file is whole: its declared size, its gzip stream complete."""
        self.close()
        if self.file.size_bytes is not None and self.size != self.file.size_bytes:
            raise InvalidInput(f"file '{self.file.href}' is {self.size} bytes in the OVA but its descriptor "
                               f"declares {self.file.size_bytes}")
        if self._inflate is not None and self.disk is not None and not self._inflate.eof:
            raise InvalidInput(f"file '{self.file.href}' ends inside its gzip stream (truncated)")


def _staging_limit(disk: ovf.OvfDisk | None) -> int:
    """The most a disk's image file may hold: its capacity plus what an image format adds (metadata,
    incompressible grains' headers); stops a gzip bomb from filling the staging space."""
    if disk is None:
        return 0
    return disk.capacity_bytes + disk.capacity_bytes // 8 + (64 << 20)


def _checked_name(member: Member, archive_size: int) -> str:
    """The member's name once it is known to be a plain regular file inside the archive."""
    name = member.name
    if member.type not in _REGULAR_TYPES or member.sparse:
        kind = {tarfile.SYMTYPE: "a symbolic link", tarfile.LNKTYPE: "a hard link", tarfile.CHRTYPE: "a device",
                tarfile.BLKTYPE: "a device", tarfile.FIFOTYPE: "a FIFO", tarfile.DIRTYPE: "a directory",
                tarfile.GNUTYPE_SPARSE: "a sparse file"}.get(member.type, "not a regular file")
        kind = "a sparse file" if member.sparse else kind
        raise InvalidInput(f"the OVA member '{name}' is {kind}; only regular files are accepted")
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts or "\\" in name or "\0" in name:
        raise InvalidInput(f"the OVA member '{name}' has a path outside the archive; refused")
    if member.size > archive_size:
        raise InvalidInput(f"the OVA member '{name}' claims {member.size} bytes, more than the whole archive")
    return str(path)


def _read_small(archive: TarStream, member: Member, limit: int, what: str) -> bytes:
    if member.size > limit:
        raise InvalidInput(f"the OVA's {what} '{member.name}' is {member.size} bytes; more than {limit} is refused")
    chunks = []
    while chunk := archive.read(READ_BYTES):
        chunks.append(chunk)
    return b"".join(chunks)


def _hashes(data: bytes, algorithms: tuple[str, ...]) -> dict[str, str]:
    return {algorithm: hashlib.new(algorithm, data).hexdigest() for algorithm in algorithms}
