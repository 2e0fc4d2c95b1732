"""Whole-VM snapshots on each storage backend (file and a real Ceph), the VM on a test-driver host: the volume
snapshots are made in one batch (librbd on Ceph, in-process copies or reflinks on files), shown as the VM
snapshot's, and a rollback returns every volume's bytes, read from the storage itself."""
import json

from pvc.cli.localcluster.guest import domain_xml

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
