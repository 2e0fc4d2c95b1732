"""A real guest on an RBD volume: QEMU's rbd driver reads and writes the local Ceph from every host, so a
live-migrated guest keeps its disk. The marker the guest writes is read back from outside, with `rbd`."""
import subprocess

import pytest

from conftest import started_cluster
from guest_support import console_text, guest_xml, wait_heartbeat


@pytest.fixture(scope="module")
def ceph_qemu_cluster(tmp_path_factory, private_ceph):
    yield from started_cluster(tmp_path_factory.mktemp("ceph-qemu"), nodes=2, coordinators=1, storage="ceph",
                              ceph_conf=private_ceph.conf, hypervisor="qemu")


def _rbd_marker(conf, image: str) -> str:
    data = subprocess.run(["rbd", "-c", str(conf), "export", "--no-progress", image, "-"], capture_output=True,
                          check=True, timeout=60).stdout[:512]
    return data.split(b"\0")[0].decode(errors="replace").strip()


def test_a_guest_on_an_rbd_volume_writes_it_and_keeps_it_across_a_live_migration(ceph_qemu_cluster, private_ceph):
    cluster, client = ceph_qemu_cluster, ceph_qemu_cluster.client
    client.storage.pool_add("rbdguests")
    client.storage.volume_add("rbdguests", "disk1", 64 * 1024 * 1024)
    client.vms.define(guest_xml("rbdguest", disk="rbdguests/disk1"), target="hv1")
    client.vms.start("rbdguest", wait=True)
    before = wait_heartbeat(cluster, "rbdguest", "hv1", after=1)
    wait_heartbeat(cluster, "rbdguest", "hv1", after=before.counter)
    assert f"disk wrote {before.counter} read pvc-marker {before.boot_id} {before.counter}" in \
        console_text(cluster, "rbdguest", "hv1")

    client.vms.migrate("rbdguest", target="hv2", wait=True)

    after = wait_heartbeat(cluster, "rbdguest", "hv2", after=before.counter + 1, timeout=20)
    assert after.boot_id == before.boot_id, "the guest did not reboot"
    wait_heartbeat(cluster, "rbdguest", "hv2", after=after.counter, timeout=10)
    assert f"disk wrote {after.counter} read pvc-marker {before.boot_id} {after.counter}" in \
        console_text(cluster, "rbdguest", "hv2")
    marker = _rbd_marker(private_ceph.conf, "rbdguests/disk1")
    assert marker.startswith(f"pvc-marker {before.boot_id} ") and int(marker.split()[-1]) >= after.counter
    client.vms.remove("rbdguest")
