"""The ``file`` storage backend: pools are directories, volumes sparse raw files, for one machine (or a
directory every node mounts).

    ROOT/POOL/VOLUME                      the volume: a sparse raw file
    ROOT/POOL/.snapshots/VOLUME/SNAPSHOT  its snapshots: copies sharing blocks where the filesystem can
                                          (``cp --reflink=auto``), sparse everywhere

Names are checked before they get here, and a volume name never starts with a dot, so a volume can never be
the snapshot directory or a path outside its pool. Internal names (uploads in progress) start with a dot.
"""
import fcntl
import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Mapping

import pvc
from pvc import block_diff
from pvc.errors import AlreadyExists, InvalidInput, NotFound, OperationFailed
from pvc.plugins import file_extents

SNAPSHOTS = ".snapshots"


class FileVolumeTarget:
    def __init__(self, path: Path):
        self.path = path
        self.qemu_name = str(path)
        self.qemu_env: dict[str, str] = {}

    @contextmanager
    def raw_writer(self, size_bytes: int) -> Iterator["SparseWriter"]:
        with open(self.path, "xb") as file:
            writer = SparseWriter(file)
            yield writer
            file.truncate(size_bytes)


class SparseWriter:
    """Writes raw data in order, seeking over all-zero blocks so that the file stays sparse."""

    BLOCK_BYTES = 1 << 20

    def __init__(self, file: BinaryIO):
        self._file = file
        self._zeros = bytes(self.BLOCK_BYTES)

    def write(self, data: bytes | bytearray) -> int:
        for offset in range(0, len(data), self.BLOCK_BYTES):
            block = data[offset:offset + self.BLOCK_BYTES]
            if block == self._zeros[:len(block)]:
                self._file.seek(len(block), os.SEEK_CUR)
            else:
                self._file.write(block)
        return len(data)


class FileBackend:
    description = "a directory per pool, a sparse raw file per volume (one machine, or a shared mount)"
    shares_volumes = True
    """`storage_directory` is the same directory on every node that serves storage (a shared mount, or one
    machine): PVC already runs a pool's actions on any one node."""

    def __init__(self, settings: Mapping[str, Any]):
        self.root = Path(settings["storage_directory"]).absolute()

    def health(self, timeout: float) -> tuple[int, str]:
        """The storage directory's free space: under 10 % free is a warning, under 5 % critical."""
        usage = shutil.disk_usage(self.root)
        free = usage.free / usage.total if usage.total else 0.0
        message = f"storage directory {self.root}: {free:.0%} free ({usage.free // 2**30} GiB)"
        return (50 if free < 0.05 else 10 if free < 0.10 else 0), message

    def _pool_dir(self, pool: str) -> Path:
        return self.root / pool

    def _existing_pool_dir(self, pool: str) -> Path:
        directory = self._pool_dir(pool)
        if not directory.is_dir():
            raise NotFound(f"storage pool '{pool}' has no directory {directory}")
        return directory

    def _volume_path(self, pool: str, volume: str) -> Path:
        return self._existing_pool_dir(pool) / volume

    def _snapshot_dir(self, pool: str, volume: str) -> Path:
        return self._existing_pool_dir(pool) / SNAPSHOTS / volume

    def _existing_volume(self, pool: str, volume: str) -> Path:
        path = self._volume_path(pool, volume)
        if not path.is_file():
            raise NotFound(f"volume '{pool}/{volume}' has no file {path}")
        return path

    # -- pools --------------------------------------------------------------------------------------------

    def pool_create(self, pool: str, options: Mapping[str, Any]) -> dict[str, Any]:
        if options:
            raise InvalidInput(f"the file backend takes no pool options (got: {', '.join(sorted(options))})")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._pool_dir(pool).mkdir()
        except FileExistsError:
            raise AlreadyExists(f"storage directory {self._pool_dir(pool)} exists already") from None
        except OSError as error:
            raise OperationFailed(f"cannot create pool directory {self._pool_dir(pool)}: {error.strerror}") \
                from None
        return {"directory": str(self._pool_dir(pool))}

    def pool_remove(self, pool: str) -> None:
        """Only an empty pool: a volume file left in it (an unrecorded one) keeps its snapshots too."""
        directory = self._pool_dir(pool)
        try:
            if any(path.name != SNAPSHOTS for path in directory.iterdir()):
                raise OperationFailed(f"cannot remove pool directory {directory}: it still holds volumes")
            shutil.rmtree(directory / SNAPSHOTS, ignore_errors=True)
            directory.rmdir()
        except FileNotFoundError:
            pass
        except OSError as error:
            raise OperationFailed(f"cannot remove pool directory {directory}: {error.strerror}") from None

    def pool_usage(self, pool: str) -> dict[str, int]:
        directory = self._existing_pool_dir(pool)
        used = sum(path.stat().st_blocks * 512 for path in directory.rglob("*") if path.is_file())
        filesystem = os.statvfs(directory)
        return {"used_bytes": used, "free_bytes": filesystem.f_bavail * filesystem.f_frsize}

    # -- volumes ------------------------------------------------------------------------------------------

    def volume_create(self, pool: str, volume: str, size_bytes: int) -> None:
        path = self._volume_path(pool, volume)
        try:
            file = open(path, "xb")
        except FileExistsError:
            raise AlreadyExists(f"volume file {path} exists already") from None
        with file:
            try:
                file.truncate(size_bytes)
            except (OSError, OverflowError) as error:
                path.unlink()
                raise InvalidInput(f"cannot make volume {pool}/{volume} {size_bytes} bytes long: "
                                   f"{getattr(error, 'strerror', None) or error}") from None

    def volume_remove(self, pool: str, volume: str) -> None:
        directory = self._pool_dir(pool)
        shutil.rmtree(directory / SNAPSHOTS / volume, ignore_errors=True)
        (directory / volume).unlink(missing_ok=True)

    def volume_size(self, pool: str, volume: str) -> int | None:
        path = self._pool_dir(pool) / volume
        return path.stat().st_size if path.is_file() else None

    def volume_resize(self, pool: str, volume: str, size_bytes: int) -> None:
        os.truncate(self._existing_volume(pool, volume), size_bytes)

    def volume_rename(self, pool: str, volume: str, new_name: str) -> None:
        source = self._existing_volume(pool, volume)
        target = source.with_name(new_name)
        if target.exists():
            raise AlreadyExists(f"volume file {target} exists already")
        snapshots = self._snapshot_dir(pool, volume)
        source.rename(target)
        if snapshots.exists():
            snapshots.rename(snapshots.with_name(new_name))

    def volume_copy(self, pool: str, volume: str, new_name: str, snapshot: str | None = None) -> None:
        source = self._snapshot_dir(pool, volume) / snapshot if snapshot else self._existing_volume(pool, volume)
        if not source.is_file():
            raise NotFound(f"snapshot '{pool}/{volume}@{snapshot}' has no file {source}")
        target = self._volume_path(pool, new_name)
        if target.exists():
            raise AlreadyExists(f"volume file {target} exists already")
        _copy(source, target)

    def volume_clone_linked(self, pool: str, volume: str, new_name: str) -> None:
        """Files have no linked clones here: a copy (sparse, or a reflink where the filesystem has them)."""
        self.volume_copy(pool, volume, new_name)

    def volume_detach_clones(self, pool: str, volume: str) -> list[str]:
        return []

    @contextmanager
    def volume_replace(self, pool: str, source: str, target: str) -> Iterator[None]:
        """The old data stays linked under a hidden name until the block ends: the target's path always
        holds the old data or the new, even if the node dies midway."""
        new, old = self._existing_volume(pool, source), self._existing_volume(pool, target)
        backup = new.with_name(f"{source}.replaced")
        os.link(old, backup)
        try:
            os.replace(new, old)
            yield
        except BaseException:
            os.replace(backup, old)
            raise
        finally:
            backup.unlink(missing_ok=True)

    def volume_names(self, pool: str) -> list[str]:
        return sorted(path.name for path in self._existing_pool_dir(pool).iterdir() if path.is_file())

    def volume_target(self, pool: str, volume: str) -> FileVolumeTarget:
        return FileVolumeTarget(self._volume_path(pool, volume))

    # -- snapshots ----------------------------------------------------------------------------------------

    def disk_source(self, pool: str, volume: str) -> dict[str, str]:
        return {"type": "file", "file": str(self._volume_path(pool, volume))}

    def snapshot_create(self, pool: str, volume: str, snapshot: str) -> None:
        source = self._existing_volume(pool, volume)
        directory = self._snapshot_dir(pool, volume)
        directory.mkdir(parents=True, exist_ok=True)
        if (directory / snapshot).exists():
            raise AlreadyExists(f"snapshot file {directory / snapshot} exists already")
        _copy(source, directory / snapshot)

    @contextmanager
    def snapshot_batch(self, volumes: list[tuple[str, str]], snapshot: str) -> Iterator["FileSnapshotBatch"]:
        pairs = []
        for pool, volume in volumes:
            source = self._existing_volume(pool, volume)
            directory = self._snapshot_dir(pool, volume)
            directory.mkdir(parents=True, exist_ok=True)
            if (directory / snapshot).exists():
                raise AlreadyExists(f"snapshot file {directory / snapshot} exists already")
            pairs.append((source, directory / snapshot))
        yield FileSnapshotBatch(pairs)

    def snapshot_export(self, pool: str, volume: str, snapshot: str, parent: str | None, output: BinaryIO) -> None:
        """The snapshot's data as an ``rbd diff v1`` stream (`pvc.block_diff`): its data extents, or with
        `parent` the blocks that differ from that snapshot (holes in both, and blocks the two still share where
        snapshots are reflinks, are skipped unread)."""
        source = self._snapshot_file(pool, volume, snapshot)
        base = self._snapshot_file(pool, volume, parent) if parent else None
        with open(source, "rb") as reading, open(base or os.devnull, "rb") as older:
            size = os.fstat(reading.fileno()).st_size
            writer = block_diff.DiffWriter(output, parent, snapshot, size)
            regions = _data_regions(reading.fileno(), size)
            if base is not None:
                regions = _merged(regions + _data_regions(older.fileno(), min(size, os.fstat(older.fileno()).st_size)))
                regions = file_extents.without(regions, file_extents.shared(reading.fileno(), older.fileno()))
            for start, end in regions:
                for offset in range(start, end, DIFF_BLOCK):
                    data = os.pread(reading.fileno(), min(DIFF_BLOCK, end - offset), offset)
                    if base is None:
                        if data.count(0) != len(data):
                            writer.data(offset, data)
                    else:
                        for changed, length in _changed_runs(data, os.pread(older.fileno(), len(data), offset)):
                            writer.data(offset + changed, data[changed:changed + length])
            writer.end()

    def _snapshot_file(self, pool: str, volume: str, snapshot: str) -> Path:
        path = self._snapshot_dir(pool, volume) / snapshot
        if not path.is_file():
            raise NotFound(f"snapshot file {path} is missing")
        return path

    def snapshot_export_size(self, pool: str, volume: str, snapshot: str, parent: str | None) -> int | None:
        """A whole snapshot's data extents (an upper bound: zero pages are skipped); for an incremental, None,
        since only reading both snapshots tells what differs."""
        if parent is not None:
            return None
        with open(self._snapshot_file(pool, volume, snapshot), "rb") as reading:
            regions = _data_regions(reading.fileno(), os.fstat(reading.fileno()).st_size)
        return block_diff.STREAM_OVERHEAD + sum(block_diff.EXTENT_OVERHEAD * -(-(end - start) // DIFF_BLOCK)
                                                + end - start for start, end in regions)

    def volume_apply_diff(self, pool: str, volume: str, stream: BinaryIO, what: str) -> None:
        """Apply an ``rbd diff v1`` stream to the volume: its size, then its extents."""
        header, extents = block_diff.read(stream, what)
        path = self._existing_volume(pool, volume)
        with open(path, "r+b") as target:
            target.truncate(header.size_bytes)
            for kind, offset, length, data in extents:
                if kind == "w":
                    os.pwrite(target.fileno(), data, offset)
                else:
                    for start in range(offset, offset + length, DIFF_BLOCK):
                        os.pwrite(target.fileno(), bytes(min(DIFF_BLOCK, offset + length - start)), start)

    def snapshot_remove(self, pool: str, volume: str, snapshot: str) -> None:
        (self._snapshot_dir(pool, volume) / snapshot).unlink(missing_ok=True)

    def snapshot_rename(self, pool: str, volume: str, snapshot: str, new_name: str) -> None:
        directory = self._snapshot_dir(pool, volume)
        source, target = directory / snapshot, directory / new_name
        if not source.exists() and target.is_file():
            return
        if target.exists():
            raise AlreadyExists(f"snapshot file {target} exists already")
        try:
            source.rename(target)
        except FileNotFoundError:
            raise NotFound(f"snapshot '{pool}/{volume}@{snapshot}' has no file {source}") from None

    def snapshot_rollback(self, pool: str, volume: str, snapshot: str) -> None:
        volume_path = self._existing_volume(pool, volume)
        source = self._snapshot_dir(pool, volume) / snapshot
        if not source.is_file():
            raise NotFound(f"snapshot '{pool}/{volume}@{snapshot}' has no file {source}")
        staging = volume_path.with_name(f".rollback-{volume}")
        _copy(source, staging)
        os.replace(staging, volume_path)


class FileSnapshotBatch:
    """Snapshots of several volume files, taken in this process: a reflink (``FICLONE``) where the filesystem
    shares blocks, else a sparse copy of the data extents only (``SEEK_DATA``, ``copy_file_range``)."""

    def __init__(self, pairs: list[tuple[Path, Path]]):
        self._pairs = pairs
        self.method = "reflink" if all(_reflinks(source.parent) for source, _target in pairs) else "sparse copy"

    def take(self) -> None:
        made: list[Path] = []
        try:
            for source, target in self._pairs:
                if target.exists():
                    raise AlreadyExists(f"snapshot file {target} exists already")
                made.append(target)
                _copy_in_process(source, target, self.method == "reflink")
        except BaseException:
            for target in made:
                target.unlink(missing_ok=True)
            raise


DIFF_BLOCK = 1 << 20
"""How much of a file volume an export reads and compares at once."""
CHANGE_BLOCK = 4096
"""Granularity of a file volume's incremental export: a changed byte sends its page (a guest's block)."""


def _changed_runs(data: bytes, older: bytes) -> Iterator[tuple[int, int]]:
    """(offset, length) of each run of `CHANGE_BLOCK` pages in which `data` differs from `older` (the parent's
    bytes at the same place, shorter where the parent file ends)."""
    if data == older:
        return
    new, old = memoryview(data), memoryview(older)
    run_start = None
    for page in range(0, len(data), CHANGE_BLOCK):
        if new[page:page + CHANGE_BLOCK] != old[page:page + CHANGE_BLOCK]:
            run_start = page if run_start is None else run_start
        elif run_start is not None:
            yield run_start, page - run_start
            run_start = None
    if run_start is not None:
        yield run_start, len(data) - run_start


def _data_regions(descriptor: int, size: int) -> list[tuple[int, int]]:
    """Where a file holds data (not holes), as (start, end) pairs below `size`."""
    regions, offset = [], 0
    while offset < size:
        try:
            start = os.lseek(descriptor, offset, os.SEEK_DATA)
        except OSError:
            break
        end = min(os.lseek(descriptor, start, os.SEEK_HOLE), size)
        if start >= size:
            break
        regions.append((start - start % DIFF_BLOCK, end))
        offset = end
    return _merged(regions)


def _merged(regions: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(regions):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _reflinks(directory: Path) -> bool:
    """Whether files in `directory` can share blocks (``FICLONE``), found by trying it once on a scratch file
    (open for reading too: a clone's source must be readable)."""
    source = directory / f".reflink-probe-{os.getpid()}"
    target = source.with_name(source.name + "-clone")
    try:
        with open(source, "w+b") as first, open(target, "wb") as second:
            first.write(b"\0" * 4096)
            first.flush()
            fcntl.ioctl(second.fileno(), FICLONE, first.fileno())
        return True
    except OSError:
        return False
    finally:
        source.unlink(missing_ok=True)
        target.unlink(missing_ok=True)


FICLONE = 0x40049409


def _copy_in_process(source: Path, target: Path, reflink: bool) -> None:
    """`target` with `source`'s data, made without a process: shared blocks, or the data extents copied."""
    with open(source, "rb") as reading, open(target, "xb") as writing:
        size = os.fstat(reading.fileno()).st_size
        if reflink:
            fcntl.ioctl(writing.fileno(), FICLONE, reading.fileno())
            return
        offset = 0
        while offset < size:
            try:
                start = os.lseek(reading.fileno(), offset, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(reading.fileno(), start, os.SEEK_HOLE)
            position = start
            while position < end:
                copied = os.copy_file_range(reading.fileno(), writing.fileno(), end - position, position, position)
                if copied == 0:
                    break
                position += copied
            offset = end
        writing.truncate(size)


def _copy(source: Path, target: Path) -> None:
    """A copy sharing blocks where the filesystem can, sparse everywhere; nothing left if it fails."""
    result = subprocess.run(["cp", "--reflink=auto", "--sparse=always", "--", str(source), str(target)],
                            capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        target.unlink(missing_ok=True)
        raise OperationFailed(f"copying {source.name} failed: {result.stderr.strip()}")


@pvc.hookimpl
def pvc_storage_backends():
    return {"file": FileBackend}
