"""A QEMU host whose libvirtd is killed and kept down, its guests running on without it: with
``libvirt_lost_action: fence`` the node's figures turn stale, its libvirt fault critical, and it fences itself
(killing the guests' QEMU processes, writing no keepalive), so the leader fences it and recovers its guests
elsewhere: each runs once, never twice, as the fault checker's monitor sees on every host.

A QEMU cluster of its own and real guests booting twice take about 45 s: under the ``bench`` marker (run with
`pytest -m bench -s`), printing how long each step took; the default suite has the same story on a test-driver
host whose libvirtd is frozen (`test_health_cluster.py`)."""
import time

import pytest

from conftest import started_cluster
from faults.checker import double_runs
from faults.history import History
from faults.monitor import HostGate, Monitor
from guest_support import boot_guests, wait_heartbeat
from helpers import eventually
from vm_support import assert_no_vm_on_two_hosts, wait_running_on


pytestmark = pytest.mark.bench


@pytest.fixture
def qemu_hosts(tmp_path_factory):
    yield from started_cluster(tmp_path_factory.mktemp("qemu-lost"), nodes=3, coordinators=1, hypervisor="qemu")


def test_a_qemu_host_without_libvirtd_fences_itself_and_its_guests_run_elsewhere_once(qemu_hosts):
    cluster, client, local = qemu_hosts, qemu_hosts.client, qemu_hosts.local
    names = ["orphan1", "orphan2"]
    boots = boot_guests(cluster, "hv1", names)
    client.cluster.config(node="hv1", libvirt_lost_action="fence", libvirt_lost_after=5)
    history = History()
    monitor = Monitor(local, history, {node: HostGate() for node in local.node_names}).start()
    try:
        killed = time.monotonic()
        local.host("hv1").stop_libvirtd()
        assert local.host("hv1").qemu_pids(), "the guests outlive their libvirtd"
        assert eventually(lambda: client.nodes.info("hv1")["figures_stale"], timeout=15), client.nodes.info("hv1")
        critical = eventually(lambda: next((fault for fault in client.cluster.faults()
                                            if fault["id"] == "node.hv1.libvirt" and fault["severity"] == "critical"),
                                           None), timeout=20)
        assert critical and "libvirt_lost_after 5 s" in critical["message"], client.cluster.faults()
        faulted = time.monotonic()
        assert eventually(lambda: client.nodes.info("hv1")["daemon_state"] == "fenced", timeout=60), \
            client.nodes.info("hv1")
        fenced = time.monotonic()
        for name in names:
            vm = eventually(lambda: (lambda vm: vm if vm["node"] != "hv1" else None)(client.vms.info(name)),
                            timeout=30)
            assert vm, client.vms.info(name)
            wait_running_on(cluster, name, vm["node"], timeout=60)
            assert wait_heartbeat(cluster, name, vm["node"]).boot_id != boots[name].boot_id, \
                f"{name} was restarted elsewhere (a new boot)"
        print(f"\nlibvirtd of hv1 killed: critical fault after {faulted - killed:.1f} s (libvirt_lost_after 5 s), "
              f"node fenced after {fenced - killed:.1f} s, both guests booted elsewhere after "
              f"{time.monotonic() - killed:.1f} s")
    finally:
        monitor.stop()
    assert not double_runs(history), [str(violation) for violation in double_runs(history)]
    assert_no_vm_on_two_hosts(cluster)
