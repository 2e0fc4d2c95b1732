"""Whole-VM snapshots on each storage backend (file and a real Ceph), the VM on a test-driver host: the volume
snapshots are made in one batch (librbd on Ceph, in-process copies or reflinks on files), shown as the VM
snapshot's, and a rollback returns every volume's bytes, read from the storage itself."""
import json

import pytest

from pvc.cli.localcluster.guest import domain_xml
from pvc.errors import Conflict, PVCError

from storage_support import known_raw, run, unique, volume_sha256
from vm_support import pvc


def _rbd_snapshots(cluster, image: str) -> list[str]:
    return [entry["name"] for entry in json.loads(run("rbd", "-c", cluster.local.state["ceph_conf"], "snap", "ls",
                                                      "--format", "json", image))]


def test_a_vm_snapshot_batches_every_volume_and_rolls_them_all_back(storage_cluster, tmp_path):
    cluster, client = storage_cluster, storage_cluster.client
    pool, vm = unique("vmsnap"), unique("snapvm")
    client.storage.pool_add(pool)
    disks = [f"{pool}/first", f"{pool}/second"]
    for index, disk in enumerate(disks):
        client.storage.upload(pool, disk.split("/")[1], str(known_raw(tmp_path / f"{index}.raw", seed=index)))
    before = {disk: volume_sha256(cluster, *disk.split("/")) for disk in disks}
    client.vms.define(domain_xml(vm, disks=disks, domain_type="kvm"), target="hv1")
    client.vms.start(vm, wait=True)
    try:
        view = client.vms.snapshot_create(vm, "one")
        assert view["method"] == ("librbd" if cluster.backend == "ceph" else "sparse copy"), view
        assert view["paused_ms"] is not None and client.vms.info(vm)["running"] is True
        rows = {row["volume"]: row for row in client.storage.snapshot_list(pool) if row["name"] == "one"}
        assert {name: row["vm_snapshot"] for name, row in rows.items()} == \
            {"first": f"{vm}@one", "second": f"{vm}@one"}
        if cluster.backend == "ceph":
            assert all("one" in _rbd_snapshots(cluster, disk) for disk in disks)

        for index, disk in enumerate(disks):
            client.storage.upload(pool, disk.split("/")[1], str(known_raw(tmp_path / f"new{index}.raw", seed=9)),
                                  force=True)
        assert all(volume_sha256(cluster, *disk.split("/")) != before[disk] for disk in disks)

        client.vms.stop(vm, wait=True)
        rolled = pvc(cluster, "vm", "snapshot", "rollback", vm, "one", "--yes")
        assert rolled.exit_code == 0, rolled.output
        assert {disk: volume_sha256(cluster, *disk.split("/")) for disk in disks} == before

        client.vms.snapshot_remove(vm, "one")
        assert [row for row in client.storage.snapshot_list(pool) if row["name"] == "one"] == []
        if cluster.backend == "ceph":
            assert not any("one" in _rbd_snapshots(cluster, disk) for disk in disks)
    finally:
        client.vms.remove(vm)
        client.storage.pool_remove(pool, force=True)


def test_a_rollback_that_failed_midway_keeps_its_vm_from_starting_until_a_second_one_finishes_it(cluster, tmp_path):
    """A rollback returns the volumes one by one: one that fails midway leaves some at the snapshot and some
    not. The VM must not start on such disks, the snapshot must not go (nothing could repair them then), and
    the next rollback finishes it. Here the second volume's snapshot file is missing (moved away, then back)."""
    client, storage_dir = cluster.client, cluster.local.storage_dir
    pool, vm = unique("halfroll"), unique("halfvm")
    client.storage.pool_add(pool)
    disks = [f"{pool}/first", f"{pool}/second"]
    for index, disk in enumerate(disks):
        client.storage.upload(pool, disk.split("/")[1], str(known_raw(tmp_path / f"{index}.raw", seed=index)))

    def contents() -> dict[str, bytes]:
        return {disk: (storage_dir / disk).read_bytes() for disk in disks}
    before = contents()
    client.vms.define(domain_xml(vm, disks=disks, domain_type="kvm"), target="hv1")
    try:
        client.vms.snapshot_create(vm, "one")
        for index, disk in enumerate(disks):
            client.storage.upload(pool, disk.split("/")[1], str(known_raw(tmp_path / f"new{index}.raw", seed=9)),
                                  force=True)
        snapshot_file = storage_dir / pool / ".snapshots" / "second" / "one"
        snapshot_file.rename(tmp_path / "hidden")
        with pytest.raises(PVCError, match="second@one"):
            client.vms.snapshot_rollback(vm, "one")
        half = contents()
        assert half[disks[0]] == before[disks[0]] and half[disks[1]] != before[disks[1]], "one volume was back"

        with pytest.raises(Conflict, match="unfinished rollback to snapshot 'one'"):
            client.vms.start(vm)
        with pytest.raises(Conflict, match="being rolled back"):
            client.vms.snapshot_remove(vm, "one")
        assert client.vms.info(vm)["state"] == "stop"

        (tmp_path / "hidden").rename(snapshot_file)
        client.vms.snapshot_rollback(vm, "one")
        assert contents() == before
        client.vms.start(vm, wait=True)
    finally:
        client.vms.remove(vm, force=True)
        client.storage.pool_remove(pool, force=True)
