"""An example storage backend, ``example-dir``: one directory per pool under the node's ``storage_directory``,
a volume as ``VOLUME.img`` (a sparse raw file), its snapshots as ``VOLUME.snapshots/SNAPSHOT``.

A backend must keep three promises (`pvc.hookspecs.StorageBackend`): every method acts at once and reports a
failure as a `pvc.errors.PVCError` with a one-line reason; removing what is already gone is not an error (PVC
repeats a removal that a crash cut short); and names are never paths (PVC checks them before they get here).
"""
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pvc
from pvc.errors import AlreadyExists, NotFound, OperationFailed

SUFFIX = ".img"
SNAPSHOTS = ".snapshots"


class ExampleTarget:
    """Where an importer writes a new volume: a path qemu-img can write, or raw bytes in order."""

    def __init__(self, path: Path):
        self.path = path
        self.qemu_name = str(path)
        self.qemu_env = {}

    @contextmanager
    def raw_writer(self, size_bytes):
        with open(self.path, "xb") as file:
            yield file
            file.truncate(size_bytes)


class ExampleDirectoryBackend:
    description = "example: a directory per pool, VOLUME.img per volume"
    shares_volumes = True
    """Every node sees the same directory (one machine, or a shared mount), so live migration is safe."""

    def __init__(self, settings):
        self.root = Path(settings["storage_directory"])

    def _pool(self, pool):
        return self.root / pool

    def _volume(self, pool, volume):
        return self.root / pool / (volume + SUFFIX)

    def _existing(self, pool, volume):
        path = self._volume(pool, volume)
        if not path.exists():
            raise NotFound(f"example-dir: no volume {pool}/{volume} ({path})")
        return path

    def _snapshots(self, pool, volume):
        return self.root / pool / (volume + SNAPSHOTS)

    def pool_create(self, pool, options):
        self._pool(pool).mkdir(parents=True, exist_ok=True)
        return {}

    def pool_remove(self, pool):
        shutil.rmtree(self._pool(pool), ignore_errors=True)

    def pool_usage(self, pool):
        usage = shutil.disk_usage(self._pool(pool))
        used = sum(path.stat().st_blocks * 512 for path in self._pool(pool).rglob("*") if path.is_file())
        return {"used_bytes": used, "free_bytes": usage.free}

    def volume_create(self, pool, volume, size_bytes):
        try:
            with open(self._volume(pool, volume), "xb") as file:
                file.truncate(size_bytes)
        except FileExistsError:
            raise AlreadyExists(f"example-dir: volume {pool}/{volume} exists already") from None
        except OSError as error:
            raise OperationFailed(f"example-dir: cannot create {pool}/{volume}: {error.strerror}") from None

    def volume_remove(self, pool, volume):
        self._volume(pool, volume).unlink(missing_ok=True)
        shutil.rmtree(self._snapshots(pool, volume), ignore_errors=True)

    def volume_size(self, pool, volume):
        path = self._volume(pool, volume)
        return path.stat().st_size if path.exists() else None

    def volume_resize(self, pool, volume, size_bytes):
        os.truncate(self._existing(pool, volume), size_bytes)

    def volume_rename(self, pool, volume, new_name):
        if self._volume(pool, new_name).exists():
            raise AlreadyExists(f"example-dir: volume {pool}/{new_name} exists already")
        self._existing(pool, volume).rename(self._volume(pool, new_name))
        if self._snapshots(pool, volume).exists():
            self._snapshots(pool, volume).rename(self._snapshots(pool, new_name))

    def volume_copy(self, pool, volume, new_name, snapshot=None):
        source = self._snapshots(pool, volume) / snapshot if snapshot else self._existing(pool, volume)
        if not source.exists():
            raise NotFound(f"example-dir: no snapshot {snapshot} of {pool}/{volume}")
        if self._volume(pool, new_name).exists():
            raise AlreadyExists(f"example-dir: volume {pool}/{new_name} exists already")
        shutil.copyfile(source, self._volume(pool, new_name))

    def volume_clone_linked(self, pool, volume, new_name):
        """Plain files share nothing: a linked clone (a VM made from an appliance) is a copy."""
        self.volume_copy(pool, volume, new_name)

    def volume_detach_clones(self, pool, volume):
        return []

    @contextmanager
    def volume_replace(self, pool, source, target):
        """Put `source`'s data in place of `target`'s, keeping the old data aside until the caller's block has
        recorded the change; put it back if anything fails."""
        target_path, aside = self._volume(pool, target), self._pool(pool) / f".aside-{target}"
        had_target = target_path.exists()
        if had_target:
            target_path.rename(aside)
        try:
            self._existing(pool, source).rename(target_path)
            yield
        except BaseException:
            if had_target:
                aside.rename(target_path)
            raise
        aside.unlink(missing_ok=True)

    def volume_names(self, pool):
        return sorted(path.name[:-len(SUFFIX)] for path in self._pool(pool).glob("*" + SUFFIX))

    def volume_target(self, pool, volume):
        return ExampleTarget(self._volume(pool, volume))

    def disk_source(self, pool, volume):
        return {"type": "file", "file": str(self._volume(pool, volume))}

    def snapshot_create(self, pool, volume, snapshot):
        directory = self._snapshots(pool, volume)
        directory.mkdir(exist_ok=True)
        if (directory / snapshot).exists():
            raise AlreadyExists(f"example-dir: snapshot {snapshot} of {pool}/{volume} exists already")
        shutil.copyfile(self._existing(pool, volume), directory / snapshot)

    def snapshot_remove(self, pool, volume, snapshot):
        (self._snapshots(pool, volume) / snapshot).unlink(missing_ok=True)

    def snapshot_rollback(self, pool, volume, snapshot):
        source = self._snapshots(pool, volume) / snapshot
        if not source.exists():
            raise NotFound(f"example-dir: no snapshot {snapshot} of {pool}/{volume}")
        shutil.copyfile(source, self._existing(pool, volume))


@pvc.hookimpl
def pvc_storage_backends():
    return {"example-dir": ExampleDirectoryBackend}
