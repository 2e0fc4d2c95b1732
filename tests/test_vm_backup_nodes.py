"""Backup roots are each node's own: an export is written by a node that has its destination under its roots,
and an incremental one by the node that holds its parent's export, whichever node the coordinator asks first."""
from pathlib import Path

import pytest

from pvc.cli.localcluster.guest import domain_xml
from pvc.errors import InvalidInput

from conftest import started_cluster
from storage_support import known_raw, unique
from vm_support import restart_node_daemon

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def two_roots(tmp_path_factory):
    """Two nodes: hv1 with the cluster's backup root, hv2 with another one of its own."""
    for cluster in started_cluster(Path(tmp_path_factory.mktemp("backup-nodes")), nodes=2, coordinators=1):
        own = Path(tmp_path_factory.mktemp("hv2-backups"))
        cluster.local.stop_daemon("pvcnoded", "hv2")
        restart_node_daemon(cluster, "hv2", extra_settings={"backup_roots": [str(own)]})
        yield cluster, own


def test_exports_land_on_the_node_whose_root_holds_them_and_incrementals_beside_their_parent(two_roots, tmp_path):
    cluster, hv2_root = two_roots
    client = cluster.client
    pool, vm = unique("bn"), unique("bnvm")
    client.storage.pool_add(pool)
    client.storage.upload(pool, "disk", str(known_raw(tmp_path / "base.raw", size=4 * MiB, seed=7)))
    client.vms.define(domain_xml(vm, disk=f"{pool}/disk", domain_type="kvm"), target="hv1")
    exports = cluster.local.backup_root / vm
    exports.mkdir()
    client.vms.snapshot_create(vm, "s0")
    written = [client.vms.snapshot_export(vm, "s0", str(exports / "s0"))["node"]]
    for parent, step in (("s0", "s1"), ("s1", "s2"), ("s2", "s3"), ("s3", "s4")):
        client.vms.snapshot_create(vm, step)
        written.append(client.vms.snapshot_export(vm, step, str(exports / step), incremental_parent=parent)["node"])
    assert written == ["hv1"] * 5, "only hv1 has the cluster's root; each export is written there"
    assert sorted(path.name for path in exports.iterdir()) == ["s0", "s1", "s2", "s3", "s4"]

    (hv2_root / vm).mkdir()
    assert client.vms.snapshot_export(vm, "s4", str(hv2_root / vm / "s4"))["node"] == "hv2"
    for copy in range(3):
        imported = client.vms.snapshot_import(str(hv2_root / vm / "s4"), name=f"{vm}-{copy}")
        assert imported["name"] == f"{vm}-{copy}", "the chain is read on the node that holds it"
    with pytest.raises(InvalidInput, match="not under a backup root"):
        client.vms.snapshot_export(vm, "s4", str(tmp_path / "nowhere"))
    assert not (tmp_path / "nowhere").exists()
