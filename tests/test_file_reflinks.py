"""File storage on a filesystem that shares blocks (XFS with reflinks, loop-mounted here): VM snapshots are
reflinks, and an incremental export reads only the blocks a guest rewrote since the parent, where ext4 must read
both snapshots whole."""
import io
import os

import pytest

from pvc.plugins.storage_file import FileBackend

from storage_support import mounted_xfs

MiB = 1 << 20
VOLUME = 64 * MiB


@pytest.fixture(scope="module")
def xfs_directory(tmp_path_factory):
    """A directory on a fresh 320 MiB XFS with reflinks."""
    with mounted_xfs(tmp_path_factory.mktemp("xfs"), 320 * MiB) as mountpoint:
        yield mountpoint


def _read_bytes() -> int:
    """What this process has read through system calls so far (page-cache hits count too)."""
    with open("/proc/self/io") as counters:
        return next(int(line.split()[1]) for line in counters if line.startswith("rchar:"))


def _snapshots_with_a_few_pages_rewritten(backend: FileBackend, directory) -> tuple[str, dict[str, bytes]]:
    """A volume of random data, snapshot s1, 12 KiB rewritten in two places, snapshot s2; returns the snapshot
    method and each snapshot's bytes."""
    backend.pool_create("p", {})
    backend.volume_create("p", "v", VOLUME)
    path = directory / "p" / "v"
    with open(path, "r+b") as volume:
        volume.write(os.urandom(VOLUME))
    with backend.snapshot_batch([("p", "v")], "s1") as batch:
        batch.take()
    with open(path, "r+b") as volume:
        volume.seek(5 * MiB + 4096)
        volume.write(os.urandom(4096))
        volume.seek(40 * MiB)
        volume.write(os.urandom(8192))
    with backend.snapshot_batch([("p", "v")], "s2") as batch:
        batch.take()
    snapshots = directory / "p" / ".snapshots" / "v"
    return batch.method, {name: (snapshots / name).read_bytes() for name in ("s1", "s2")}


def _incremental(backend: FileBackend) -> tuple[bytes, int]:
    """The s1-to-s2 stream, and how many bytes making it read."""
    stream = io.BytesIO()
    before = _read_bytes()
    backend.snapshot_export("p", "v", "s2", "s1", stream)
    return stream.getvalue(), _read_bytes() - before


def test_on_a_reflink_filesystem_an_incremental_export_reads_only_what_changed(xfs_directory, tmp_path):
    backend = FileBackend({"storage_directory": str(xfs_directory)})
    method, data = _snapshots_with_a_few_pages_rewritten(backend, xfs_directory)
    assert method == "reflink"

    stream, read = _incremental(backend)
    assert read < MiB, f"{read} bytes read for 12 KiB changed: blocks the snapshots share were read"
    assert len(stream) < 16 * 1024

    restored = FileBackend({"storage_directory": str(tmp_path)})
    restored.pool_create("p", {})
    restored.volume_create("p", "v", VOLUME)
    full = io.BytesIO()
    backend.snapshot_export("p", "v", "s1", None, full)
    restored.volume_apply_diff("p", "v", io.BytesIO(full.getvalue()), "s1")
    restored.volume_apply_diff("p", "v", io.BytesIO(stream), "s1 to s2")
    assert (tmp_path / "p" / "v").read_bytes() == data["s2"], "the chain does not rebuild the snapshot"


def test_on_ext4_the_same_incremental_reads_both_snapshots(tmp_path):
    """The control: where snapshots are copies, nothing is shared, and only reading tells what changed."""
    backend = FileBackend({"storage_directory": str(tmp_path)})
    method, _data = _snapshots_with_a_few_pages_rewritten(backend, tmp_path)
    assert method == "sparse copy"
    stream, read = _incremental(backend)
    assert read >= 2 * VOLUME and len(stream) < 16 * 1024
