"""Exports of RBD snapshots through the node's long-lived librbd helper (`pvc.plugins.ceph_exports`), on the
private Ceph: what it streams restores the snapshot byte for byte through ``rbd import-diff``, an incremental
carries only what changed, a failure names the snapshot and Ceph's reason, and a helper that died is replaced."""
from __future__ import annotations

import hashlib
import io
import subprocess
import time
from typing import Iterator

import pytest

from pvc.errors import OperationFailed
from pvc.plugins.storage_ceph import CephBackend

from storage_support import write_through_librbd

MiB = 1 << 20
POOL = "exports"


def rbd(conf: str, *arguments: str) -> bytes:
    return subprocess.run(["rbd", "-c", conf, *arguments], check=True, capture_output=True, timeout=120).stdout


def digest(conf: str, image: str) -> str:
    return hashlib.sha256(rbd(conf, "export", "--no-progress", image, "-")).hexdigest()


@pytest.fixture
def backend(private_ceph) -> Iterator[CephBackend]:
    backend = CephBackend({"ceph_conf": str(private_ceph.conf), "qemu_img_memory_limit_mib": 512,
                           "qemu_img_cpu_limit_s": 60})
    backend.pool_create(POOL, {})
    try:
        yield backend
    finally:
        backend._exporter.close()
        for volume in backend.volume_names(POOL):
            backend.volume_remove(POOL, volume)
        backend.pool_remove(POOL)


def test_a_full_and_an_incremental_export_restore_the_snapshot_byte_for_byte(backend, tmp_path):
    conf = backend.conf
    backend.volume_create(POOL, "disk", 64 * MiB)
    # 12 MiB over 3 objects
    write_through_librbd(conf, f"{POOL}/disk", 0, bytes(range(256)) * 4096 * 12, tmp_path / "data")
    backend.snapshot_create(POOL, "disk", "s1")
    for offset in (4096, 5 * MiB + 8192, 11 * MiB):
        write_through_librbd(conf, f"{POOL}/disk", offset, b"changed!" * 512, tmp_path / "data")
    backend.snapshot_create(POOL, "disk", "s2")

    full, incremental = io.BytesIO(), io.BytesIO()
    backend.snapshot_export(POOL, "disk", "s1", None, full)
    backend.snapshot_export(POOL, "disk", "s2", "s1", incremental)
    assert len(full.getvalue()) <= backend.snapshot_export_size(POOL, "disk", "s1", None)
    assert len(incremental.getvalue()) <= backend.snapshot_export_size(POOL, "disk", "s2", "s1")
    assert 12 * MiB <= len(full.getvalue()) < 13 * MiB, "a full export carries the allocated extents only"
    assert len(incremental.getvalue()) < 16 * 1024, "an incremental export carries the changed blocks only"
    theirs = rbd(conf, "export-diff", "--no-progress", "--from-snap", "s1", f"{POOL}/disk@s2", "-")
    assert abs(len(incremental.getvalue()) - len(theirs)) < 1024, "rbd export-diff carries as much"

    backend.volume_create(POOL, "restored", 64 * MiB)
    for stream in (full, incremental):
        stream.seek(0)
        backend.volume_apply_diff(POOL, "restored", stream, "the export")
    assert digest(conf, f"{POOL}/restored") == digest(conf, f"{POOL}/disk@s2")


def test_a_failed_export_names_the_snapshot_and_why_and_a_dead_helper_is_replaced(backend):
    backend.volume_create(POOL, "disk", 8 * MiB)
    backend.snapshot_create(POOL, "disk", "s1")
    began = time.monotonic()
    with pytest.raises(OperationFailed, match=rf"export of {POOL}/disk@nosuch failed: .*not found"):
        backend.snapshot_export(POOL, "disk", "nosuch", None, io.BytesIO())
    assert time.monotonic() - began < 10, "the failure came only when the helper's idle time ended its output"

    idle = backend._exporter._idle
    assert len(idle) == 1, "the helper stays for the next export"
    idle[0].process.kill()
    idle[0].process.wait()
    stream = io.BytesIO()
    backend.snapshot_export(POOL, "disk", "s1", None, stream)
    assert stream.getvalue().startswith(b"rbd diff v1\n") and stream.getvalue().endswith(b"e")


class _FailingAfter(io.RawIOBase):
    """An output whose disk fills once `room` bytes are written."""

    def __init__(self, room: int):
        self.room = room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(28, "No space left on device")
        self.room -= len(data)
        return len(data)


def test_an_output_that_fails_midway_ends_that_helper_and_the_next_export_is_whole(backend, tmp_path):
    """The helper is then mid-stream, with reads in flight into memory the node shares: it is closed, not kept
    for the next export, whose stream is whole."""
    conf = backend.conf
    backend.volume_create(POOL, "disk", 64 * MiB)
    write_through_librbd(conf, f"{POOL}/disk", 0, bytes(range(256)) * 4096 * 40, tmp_path / "data")
    backend.snapshot_create(POOL, "disk", "s1")
    with pytest.raises(OSError, match="No space left"):
        backend.snapshot_export(POOL, "disk", "s1", None, _FailingAfter(9 * MiB))
    assert backend._exporter._idle == [], "a helper broken off mid-stream is not kept"

    stream = io.BytesIO()
    backend.snapshot_export(POOL, "disk", "s1", None, stream)
    backend.volume_create(POOL, "restored", 64 * MiB)
    stream.seek(0)
    backend.volume_apply_diff(POOL, "restored", stream, "the export")
    assert digest(conf, f"{POOL}/restored") == digest(conf, f"{POOL}/disk@s1")
