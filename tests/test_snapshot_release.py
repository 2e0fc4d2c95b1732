"""A pause for a VM snapshot that outlives the node's libvirt deadline: the node gives up on it, resumes the
guest and abandons the snapshot, but libvirtd may still carry the pause out afterwards. The guest must run
again once libvirt has ended every call on it, not stay paused for good.

hv1's libvirtd is reached through a relay that holds its DOMAIN_SUSPEND call (and, as one connection carries
every call, what follows it) past the deadline (`slow_libvirt`)."""
import time

import pytest

from pvc.cli.localcluster.cluster import LIBVIRT_TIMEOUT
from pvc.errors import PVCError

from helpers import eventually
from slow_libvirt import DOMAIN_SUSPEND_PROCEDURES, LibvirtRelay
from storage_support import vm_on_known_disk
from test_slow_libvirt_start import _restart_node_daemon


def test_a_pause_that_outlives_the_libvirt_deadline_is_undone_once_libvirt_carries_it_out(cluster, tmp_path):
    client, local = cluster.client, cluster.local
    pool, vm, _image = vm_on_known_disk(client, "late", tmp_path, seed=4)
    slow = LibvirtRelay(local.host("hv1").socket_path, held=DOMAIN_SUSPEND_PROCEDURES)
    _restart_node_daemon(cluster, "hv1", libvirt_uri=slow.uri())
    try:
        client.vms.start(vm, wait=True)
        slow.hold(LIBVIRT_TIMEOUT + 2)
        with pytest.raises(PVCError):
            client.vms.snapshot_create(vm, "late")
        assert eventually(lambda: slow.held, 2 * LIBVIRT_TIMEOUT), "the pause never reached libvirtd"
        slow.hold(0)
        assert eventually(lambda: cluster.host_domains("hv1").get(vm) is True, 4 * LIBVIRT_TIMEOUT, interval=0.2), \
            "the guest stayed paused after its late pause"
        time.sleep(2.0)
        assert cluster.host_domains("hv1").get(vm) is True, "paused again"
        assert [view["name"] for view in client.vms.snapshot_list(vm)] == []
    finally:
        slow.hold(0)
        _restart_node_daemon(cluster, "hv1")
        slow.close()
        client.vms.remove(vm, force=True)
        client.storage.pool_remove(pool, force=True)
