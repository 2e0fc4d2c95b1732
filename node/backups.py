"""VM snapshot exports on a node's backup roots, and restoring a VM from a chain of them.

An export is a new directory under one of the node's backup roots (``backup_roots`` in pvcnoded.yaml: a
mounted backup store): one ``rbd diff v1`` stream per volume (`pvc.block_diff`; full, or the changes since the
parent snapshot) and ``manifest.json``, written last, naming the VM's document and metadata and, per volume,
its size, stream file, byte count and SHA-256. An incremental export names its parent's export (a sibling
directory) and that manifest's SHA-256, so a chain is checked link by link before any data is read.

Paths come from API callers, so nothing here follows a symbolic link or accepts ``..``: every component is
opened with ``O_NOFOLLOW`` from the root down, the export's directory is created new (an existing one is
refused: nothing is overwritten), and every file in it is created exclusively. An export is written into a
hidden directory beside its destination and renamed into place once whole; a failed export removes it, and one
cut off by the node's death is removed when pvcnoded starts again. A failed restore removes the volumes it made.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import stat
import time
import uuid
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Iterator

from pvc import schema
from pvc.errors import AlreadyExists, InvalidInput, NotFound, OperationFailed
from pvc.hookspecs import StorageBackend

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "pvc-vm-export/1"
MAX_MANIFEST_BYTES = 1 << 20
MAX_CHAIN = 1000
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


class BackupRoots:
    def __init__(self, roots: list[str], journal: str | Path):
        self.roots = [PurePosixPath(root) for root in roots]
        self.journal = Path(journal)
        """Where this node notes each export under way (the hidden directory it writes), for `sweep`."""

    def _split(self, path: str, what: str) -> tuple[PurePosixPath, list[str]]:
        """The backup root `path` lies under, and its components below the root; refuses anything else."""
        if not isinstance(path, str) or not path.startswith("/"):
            raise InvalidInput(f"{what} {path!r} must be an absolute path under a backup root")
        parts = PurePosixPath(path).parts
        if ".." in parts or "." in path.split("/"):
            raise InvalidInput(f"{what} {path!r} must not contain '..' or '.'")
        for root in self.roots:
            if PurePosixPath(path).is_relative_to(root) and PurePosixPath(path) != root:
                return root, list(PurePosixPath(path).relative_to(root).parts)
        configured = ", ".join(map(str, self.roots)) or "none configured"
        raise InvalidInput(f"{what} {path} is not under a backup root of this node ({configured})")

    @contextmanager
    def _walk(self, root: PurePosixPath, parts: list[str], what: str) -> Iterator[int]:
        """A descriptor of root/parts..., opened one component at a time without following any link."""
        descriptors = []
        try:
            descriptors.append(os.open(str(root), _DIRECTORY))
            for part in parts:
                try:
                    descriptors.append(os.open(part, _DIRECTORY, dir_fd=descriptors[-1]))
                except FileNotFoundError:
                    raise NotFound(f"{what}: {part} does not exist") from None
                except OSError:
                    raise InvalidInput(f"{what}: {part} is not a directory (links are not followed)") from None
            yield descriptors[-1]
        finally:
            for descriptor in descriptors:
                os.close(descriptor)

    @contextmanager
    def new_directory(self, destination: str) -> Iterator[tuple[int, int]]:
        """Yield a new hidden directory beside `destination` (whose parent must exist) and its parent's
        descriptor; once the block ends it is renamed to `destination`, so that name only ever holds a whole
        export. A failed block removes it; one cut off by the node's death is removed when the node starts
        again (`sweep`), from the journal entry written before it was made."""
        root, parts = self._split(destination, "destination")
        with self._walk(root, parts[:-1], f"destination {destination}") as parent:
            _refuse_existing(parts[-1], parent, destination)
            token = uuid.uuid4().hex
            partial = f".{parts[-1]}.partial-{token}"
            entry = self._journal(token, str(PurePosixPath(destination).parent / partial))
            try:
                os.mkdir(partial, 0o750, dir_fd=parent)
            except OSError as error:
                entry.unlink(missing_ok=True)
                if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                    raise OperationFailed(f"destination {destination} is not writable: {error.strerror}") from None
                raise OperationFailed(f"cannot create a directory beside {destination}: {error.strerror}") from None
            directory = os.open(partial, _DIRECTORY, dir_fd=parent)
            try:
                yield directory, parent
                _refuse_existing(parts[-1], parent, destination)
                os.rename(partial, parts[-1], src_dir_fd=parent, dst_dir_fd=parent)
            except BaseException:
                _remove_tree(partial, parent)
                raise
            finally:
                os.close(directory)
                entry.unlink(missing_ok=True)

    def _journal(self, token: str, path: str) -> Path:
        entry = self.journal / token
        self.journal.mkdir(parents=True, exist_ok=True)
        entry.write_text(path)
        return entry

    def sweep(self) -> list[str]:
        """Remove the partial exports a killed daemon left (named in its journal); returns their paths."""
        if not self.journal.is_dir():
            return []
        removed = []
        for entry in sorted(self.journal.iterdir()):
            path = entry.read_text().strip()
            try:
                root, parts = self._split(path, "partial export")
                if not (parts[-1].startswith(".") and ".partial-" in parts[-1]):
                    raise InvalidInput(f"{path} is not a partial export")
                with self._walk(root, parts[:-1], path) as parent:
                    _remove_tree(parts[-1], parent)
                removed.append(path)
            except NotFound:
                pass
            except Exception as error:
                log.error("the partial export %s could not be removed: %s", path, error)
                continue
            entry.unlink(missing_ok=True)
        for path in removed:
            log.warning("removed %s, an export cut short by this daemon's death", path)
        return removed

    def ensure_directory(self, path: str) -> None:
        """Make directory `path` (whose parent must exist) unless it is one already; a link is refused."""
        root, parts = self._split(path, "directory")
        with self._walk(root, parts[:-1], f"directory {path}") as parent:
            try:
                os.mkdir(parts[-1], 0o750, dir_fd=parent)
            except FileExistsError:
                pass
            except OSError as error:
                raise OperationFailed(f"cannot create {path}: {error.strerror}") from None
            with _opened(parts[-1], parent, f"directory {path}"):
                pass

    def holds_export(self, path: str) -> bool:
        """Whether `path` is a finished export (its manifest, written last, is there)."""
        root, parts = self._split(path, "export")
        try:
            with self._walk(root, parts, f"export {path}") as directory:
                os.stat(MANIFEST, dir_fd=directory, follow_symlinks=False)
        except (NotFound, FileNotFoundError):
            return False
        return True

    def remove_export(self, path: str) -> bool:
        """Remove the export directory `path` and its files, following no link; False when it was gone."""
        root, parts = self._split(path, "export")
        try:
            with self._walk(root, parts[:-1], f"export {path}") as parent:
                if not _exists(parts[-1], parent):
                    return False
                _remove_tree(parts[-1], parent)
        except NotFound:
            return False
        return True

    @contextmanager
    def existing_directory(self, source: str) -> Iterator[tuple[int, int]]:
        """`source`'s descriptor and its parent's."""
        root, parts = self._split(source, "source")
        with self._walk(root, parts[:-1], f"source {source}") as parent, \
                _opened(parts[-1], parent, f"source {source}") as directory:
            yield directory, parent


def _refuse_existing(name: str, parent: int, destination: str) -> None:
    if _exists(name, parent):
        raise AlreadyExists(f"destination {destination} exists already; nothing is overwritten")


def _exists(name: str, parent: int) -> bool:
    try:
        os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _remove_tree(name: str, parent: int) -> None:
    """Remove directory `name` and the files in it (an export holds no subdirectory), following no link."""
    try:
        directory = os.open(name, _DIRECTORY, dir_fd=parent)
    except FileNotFoundError:
        return
    try:
        for each in os.listdir(directory):
            os.unlink(each, dir_fd=directory)
    finally:
        os.close(directory)
    os.rmdir(name, dir_fd=parent)


@contextmanager
def _opened(name: str, parent: int, label: str) -> Iterator[int]:
    try:
        descriptor = os.open(name, _DIRECTORY, dir_fd=parent)
    except FileNotFoundError:
        raise NotFound(f"{label} does not exist") from None
    except OSError:
        raise InvalidInput(f"{label} is not a directory (links are not followed)") from None
    try:
        yield descriptor
    finally:
        os.close(descriptor)


class Deadline:
    """The time a restore has on its node. The coordinator that asked stops waiting after its call's timeout and
    removes the new volumes; a restore that wrote on past that would make a volume with no record. So the node
    gives up first: it checks before every volume it makes and every piece it reads, and removes what it made."""

    def __init__(self, within_s: float | None):
        self.within_s = within_s
        self.at = None if within_s is None else time.monotonic() + within_s

    def check(self) -> None:
        if self.at is not None and time.monotonic() > self.at:
            raise OperationFailed(f"the restore ran past the {self.within_s:.0f} s its coordinator waits; the "
                                  "volumes it made are removed")

    def bounded(self, file: BinaryIO) -> "Bounded":
        return Bounded(file, self)


class Bounded:
    """A file whose reads end at a `Deadline`."""

    def __init__(self, file: BinaryIO, deadline: Deadline):
        self.file, self.deadline = file, deadline

    def read(self, count: int = -1) -> bytes:
        self.deadline.check()
        return self.file.read(count)


class Hashing:
    """A file wrapper counting and hashing what passes through it."""

    def __init__(self, file: BinaryIO):
        self.file = file
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.bytes += len(data)
        return self.file.write(data)

    def read(self, count: int = -1) -> bytes:
        data = self.file.read(count)
        self.sha256.update(data)
        self.bytes += len(data)
        return data


def stream_name(volume: str) -> str:
    pool, name = volume.split("/", 1)
    return f"{pool}.{name}.diff"


def export(backend: StorageBackend, roots: BackupRoots, manifest: dict[str, Any], destination: str) -> dict[str, Any]:
    """Write the export `manifest` describes (``vm``, ``snapshot``, ``parent``, ``spec``, ``volumes``: sizes by
    ``POOL/VOLUME``) to the new directory `destination`; returns the manifest as written."""
    if getattr(backend, "snapshot_export", None) is None:
        raise OperationFailed("this node's storage backend cannot export snapshots")
    with roots.new_directory(destination) as (directory, parent):
        parent_link = _parent_link(parent, manifest, destination) if manifest["parent"] else None
        _check_room(backend, manifest, parent, destination)
        volumes = []
        for volume, size_bytes in manifest["volumes"].items():
            pool, name = volume.split("/", 1)
            descriptor = os.open(stream_name(volume), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640,
                                 dir_fd=directory)
            hashing = Hashing(os.fdopen(descriptor, "wb", buffering=1 << 20))
            try:
                with hashing.file:
                    backend.snapshot_export(pool, name, manifest["snapshot"], manifest["parent"], hashing)
            except OSError as error:
                if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                raise OperationFailed(f"destination {destination} is too small: its filesystem filled while volume "
                                      f"{volume} was written; nothing was kept") from None
            volumes.append({"volume": volume, "size_bytes": size_bytes, "file": stream_name(volume),
                            "bytes": hashing.bytes, "sha256": hashing.sha256.hexdigest()})
        written = {"format": FORMAT, "vm": manifest["vm"], "snapshot": manifest["snapshot"],
                   "parent": manifest["parent"], "parent_export": parent_link, "created": time.time(),
                   "spec": manifest["spec"], "volumes": volumes}
        descriptor = os.open(MANIFEST, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640,
                             dir_fd=directory)
        with os.fdopen(descriptor, "wb") as output:
            output.write(json.dumps(written, indent=1, sort_keys=True).encode())
    return written


def _check_room(backend: StorageBackend, manifest: dict[str, Any], parent: int, destination: str) -> None:
    """Refuse, before writing, an export that cannot fit where the backend can tell its size; an incremental
    on file storage cannot be told, and is stopped by its filesystem filling instead."""
    estimate = getattr(backend, "snapshot_export_size", None)
    if estimate is None:
        return
    needed = 0
    for volume in manifest["volumes"]:
        size = estimate(*volume.split("/", 1), manifest["snapshot"], manifest["parent"])
        if size is None:
            return
        needed += size
    filesystem = os.fstatvfs(parent)
    free = filesystem.f_bavail * filesystem.f_frsize
    if needed > free:
        raise OperationFailed(f"destination {destination} is too small: the export needs up to {_mib(needed)}, "
                              f"its filesystem has {_mib(free)} free")


def _mib(count: int) -> str:
    return f"{count / (1 << 20):.1f} MiB"


def _parent_link(parent: int, manifest: dict[str, Any], destination: str) -> dict[str, str]:
    """The sibling export of the parent snapshot: its directory name and its manifest's SHA-256."""
    for name in sorted(os.listdir(parent)):
        try:
            with _opened(name, parent, name) as sibling:
                raw, found = _read_manifest(sibling, name)
        except Exception:
            continue
        if found.get("vm") == manifest["vm"] and found.get("snapshot") == manifest["parent"]:
            return {"directory": name, "sha256": hashlib.sha256(raw).hexdigest()}
    raise NotFound(f"no export of snapshot '{manifest['parent']}' of VM '{manifest['vm']}' beside {destination}: "
                   "export it there first")


def _read_manifest(directory: int, label: str) -> tuple[bytes, dict[str, Any]]:
    try:
        descriptor = os.open(MANIFEST, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=directory)
    except FileNotFoundError:
        raise InvalidInput(f"{label} holds no {MANIFEST}: not a finished export") from None
    with os.fdopen(descriptor, "rb") as stream:
        if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
            raise InvalidInput(f"{label}/{MANIFEST} is not a regular file")
        raw = stream.read(MAX_MANIFEST_BYTES + 1)
    if len(raw) > MAX_MANIFEST_BYTES:
        raise InvalidInput(f"{label}/{MANIFEST} is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        manifest = json.loads(raw)
    except ValueError as error:
        raise InvalidInput(f"{label}/{MANIFEST} is not valid JSON: {error}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InvalidInput(f"{label}/{MANIFEST} is not a {FORMAT} manifest")
    _check_manifest(manifest, label)
    return raw, manifest


def _check_manifest(manifest: dict[str, Any], label: str) -> None:
    try:
        schema.check_name("VM", manifest["vm"])
        schema.check_name("snapshot", manifest["snapshot"])
        if manifest["parent"] is not None:
            schema.check_name("snapshot", manifest["parent"])
            schema.check_name("export", manifest["parent_export"]["directory"])
        if not isinstance(manifest["spec"], dict) or not isinstance(manifest["spec"].get("xml"), str):
            raise ValueError("no domain document")
        for volume in manifest["volumes"]:
            pool, name = volume["volume"].split("/", 1)
            schema.check_name("pool", pool)
            schema.check_name("volume", name)
            if volume["file"] != stream_name(volume["volume"]) or not isinstance(volume["bytes"], int) or \
                    not isinstance(volume["size_bytes"], int) or len(volume["sha256"]) != 64:
                raise ValueError(f"volume {volume['volume']} is described wrongly")
    except (KeyError, TypeError, ValueError, AttributeError, InvalidInput) as error:
        raise InvalidInput(f"{label}/{MANIFEST} is malformed: {error}") from None


def chain(roots: BackupRoots, source: str) -> list[dict[str, Any]]:
    """The manifests from the full export to `source`, oldest first, each link checked: the parent's manifest
    is the one the child names (same SHA-256), of the child's parent snapshot, of the same VM."""
    with roots.existing_directory(source) as (directory, parent):
        _raw, manifest = _read_manifest(directory, source)
        manifest["directory"] = PurePosixPath(source).name
        links = [manifest]
        while manifest["parent"] is not None:
            if len(links) > MAX_CHAIN:
                raise InvalidInput(f"the chain of {source} is longer than {MAX_CHAIN} exports")
            link = manifest["parent_export"]
            label = str(PurePosixPath(source).parent / link["directory"])
            with _opened(link["directory"], parent, f"the parent export {label}") as older:
                raw, found = _read_manifest(older, label)
            if hashlib.sha256(raw).hexdigest() != link["sha256"]:
                raise InvalidInput(f"the parent export {label} is not the one {manifest['directory']} was made from "
                                   "(its manifest changed)")
            if found["vm"] != manifest["vm"] or found["snapshot"] != manifest["parent"]:
                raise InvalidInput(f"the parent export {label} holds {found['vm']}@{found['snapshot']}, not "
                                   f"{manifest['vm']}@{manifest['parent']}")
            found["directory"] = link["directory"]
            links.append(found)
            manifest = found
    return list(reversed(links))


def restore(backend: StorageBackend, roots: BackupRoots, source: str, targets: dict[str, str],
            deadline: Deadline) -> dict[str, int]:
    """Make the volumes `targets` names (``POOL/VOLUME`` in the export → ``POOL/VOLUME`` here) from the chain
    ending at `source`, checking every stream's size and SHA-256 as it is applied; returns their sizes. On any
    failure, the `deadline` passing among them, the volumes made are removed."""
    links = chain(roots, source)
    made: list[tuple[str, str]] = []
    try:
        with roots.existing_directory(source) as (_directory, parent):
            for link in links:
                with _opened(link["directory"], parent, link["directory"]) as directory:
                    for volume in link["volumes"]:
                        target = targets.get(volume["volume"])
                        if target is None:
                            raise InvalidInput(f"{link['directory']} holds volume {volume['volume']}, which "
                                               "the last export does not")
                        pool, name = target.split("/", 1)
                        if link["parent"] is None:
                            deadline.check()
                            backend.volume_create(pool, name, volume["size_bytes"])
                            made.append((pool, name))
                        _apply(backend, directory, link, volume, pool, name, deadline)
        finished = getattr(backend, "import_finished", None)
        for pool, name in made:
            if finished is not None:
                finished(pool, name)
        return {target: backend.volume_size(*target.split("/", 1)) for target in targets.values()}
    except BaseException:
        for pool, name in made:
            backend.volume_remove(pool, name)
        raise


def _apply(backend: StorageBackend, directory: int, link: dict[str, Any], volume: dict[str, Any], pool: str,
           name: str, deadline: Deadline) -> None:
    label = f"{link['directory']}/{volume['file']}"
    try:
        descriptor = os.open(volume["file"], os.O_RDONLY | os.O_NOFOLLOW, dir_fd=directory)
    except FileNotFoundError:
        raise InvalidInput(f"{label} is missing") from None
    with os.fdopen(descriptor, "rb", buffering=1 << 20) as stream:
        hashing = Hashing(deadline.bounded(stream))
        backend.volume_apply_diff(pool, name, hashing, label)
        hashing.read()
    if hashing.bytes != volume["bytes"] or hashing.sha256.hexdigest() != volume["sha256"]:
        raise InvalidInput(f"{label} does not match its manifest ({hashing.bytes} bytes, checksum "
                           f"{hashing.sha256.hexdigest()[:12]}..., expected {volume['bytes']} bytes, "
                           f"{volume['sha256'][:12]}...)")
