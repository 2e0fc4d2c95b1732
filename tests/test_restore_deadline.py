"""A node's restore gives up within the time its coordinator waits, and removes what it made: the coordinator
removes the new volumes when its call times out, and a restore that went on would then make a volume that no
record names."""
import time

import pytest

from pvc.errors import OperationFailed
from pvc.node import backups
from pvc.plugins.storage_file import FileBackend

MiB = 1 << 20


@pytest.fixture
def exported(tmp_path):
    backend = FileBackend({"storage_directory": str(tmp_path / "storage")})
    backend.pool_create("pool", {})
    for disk in ("a", "b"):
        backend.volume_create("pool", disk, 4 * MiB)
        with open(tmp_path / "storage" / "pool" / disk, "r+b") as volume:
            volume.write(disk.encode() * MiB)
        backend.snapshot_create("pool", disk, "s1")
    (tmp_path / "root").mkdir()
    roots = backups.BackupRoots([str(tmp_path / "root")], tmp_path / "journal")
    manifest = {"vm": "vm", "snapshot": "s1", "parent": None, "spec": {"xml": "<domain/>"},
                "volumes": {"pool/a": 4 * MiB, "pool/b": 4 * MiB}}
    backups.export(backend, roots, manifest, str(tmp_path / "root" / "full"))
    return backend, roots, str(tmp_path / "root" / "full")


def test_a_restore_that_runs_out_of_time_removes_its_volumes_and_makes_no_more(exported, mocker):
    backend, roots, source = exported
    targets = {"pool/a": "pool/new_a", "pool/b": "pool/new_b"}
    apply_diff = backend.volume_apply_diff

    def slow_storage(pool, name, stream, label):
        apply_diff(pool, name, stream, label)
        time.sleep(1.2)
    mocker.patch.object(backend, "volume_apply_diff", side_effect=slow_storage)

    with pytest.raises(OperationFailed, match="ran past the 1 s its coordinator waits; the volumes it made are "
                                              "removed"):
        backups.restore(backend, roots, source, targets, backups.Deadline(1.0))
    assert backend.volume_size("pool", "new_a") is None, "the volume made before the deadline is removed"
    assert backend.volume_size("pool", "new_b") is None, "no volume is made after the deadline"


def test_a_restore_within_its_time_is_whole(exported):
    backend, roots, source = exported
    sizes = backups.restore(backend, roots, source, {"pool/a": "pool/new_a", "pool/b": "pool/new_b"},
                            backups.Deadline(60.0))
    assert sizes == {"pool/new_a": 4 * MiB, "pool/new_b": 4 * MiB}
