"""A node daemon's start: its self-fence watchdog watches before anything else the start does after it owns
the node, since the guests that outlived the previous daemon run already.

The full suite once cut a restarted node off from ZooKeeper between its first keepalive and the start of its
watchdog (which then came after the peer directory's reads, which hung on the cut): no self-fence came, and the
leader's BMC fence was what stopped its guests (`test_fencing.py`, QEMU)."""
import threading
import time

import pytest

from pvc import config
from pvc.errors import PVCError
from pvc.node.daemon import NodeDaemon
from pvc.node.hypervisor import DomainActions
from pvc.node.ownership import NodeOwnership
from pvc.node.reconcile import Reconciler
from pvc.node.self_fence import SelfFence

from test_node_index import node_in_process
from test_self_fencing import ZooKeeperLink
from helpers import eventually
from vm_support import running_hosts, vm_xml, wait_running_on


def test_the_self_fence_watchdog_watches_before_the_daemon_converges_its_vms_and_says_it_runs(cluster, mocker):
    watching = []
    converge_all = Reconciler.converge_all

    def noting_the_watchdog(reconciler, *args, **kwargs):
        watching.append(any(thread.name == "self-fence" and thread.is_alive() for thread in threading.enumerate()))
        return converge_all(reconciler, *args, **kwargs)
    mocker.patch.object(Reconciler, "converge_all", noting_the_watchdog)

    with node_in_process(cluster) as node:
        assert watching and watching[0], "the start's converge of every VM ran before the watchdog did"
        assert node.self_fence.fenced_reason is None


def test_a_start_that_waited_longer_than_the_self_fence_silence_to_own_its_node_is_not_taken_for_a_cut(cluster,
                                                                                                       mocker):
    """The watchdog's silence counts from ZooKeeper's answer that the daemon owns its node: counted from the
    daemon's creation, a start that waited for the last daemon's session to end (here 3 s, past the 2 s silence
    of the local cluster's settings) had the watchdog ask its peers at once whether the node was cut off, and a
    ZooKeeper hiccup then would have stopped every guest of a healthy node."""
    acquire = NodeOwnership.acquire

    def after_a_wait(ownership, *args, **kwargs):
        time.sleep(3.0)
        return acquire(ownership, *args, **kwargs)
    mocker.patch.object(NodeOwnership, "acquire", after_a_wait)
    converge_all = Reconciler.converge_all

    def slowly(reconciler, *args, **kwargs):
        time.sleep(0.5)  # within the silence: the watchdog looks (every 0.1 s here) before the first keepalive
        return converge_all(reconciler, *args, **kwargs)
    mocker.patch.object(Reconciler, "converge_all", slowly)
    asked = mocker.spy(SelfFence, "_ask")

    with node_in_process(cluster) as node:
        time.sleep(1.5)
        assert asked.call_count == 0, "the watchdog asked whether the node was cut off while ZooKeeper answered it"
        assert node.self_fence.fenced_reason is None


@pytest.mark.cluster(nodes=3)
def test_a_start_cut_off_from_zookeeper_once_its_watchdog_watched_ends_only_after_its_guests_are_off(fresh_cluster,
                                                                                                   mocker):
    """A request cut off from ZooKeeper fails as soon as kazoo notices, well before the self-fence's silence is
    over: the start that failed so stopped its watchdog and left, and the guests that had outlived the last
    daemon ran on with nothing to stop them but the leader's BMC fence. Now the failed start stays until the
    watchdog has fenced the node (its peers reach ZooKeeper) and seen every guest off."""
    local, client = fresh_cluster.local, fresh_cluster.client
    client.vms.define(vm_xml("outlived"), target="hv1")
    client.vms.start("outlived", wait=True)
    link = ZooKeeperLink(local.state["zookeeper_port"])
    local.stop_daemon("pvcnoded", "hv1")
    settings = config.load(local.state_dir / "nodes" / "hv1" / "pvcnoded.yaml", config.NODED_SETTINGS,
                           {"log_file": None, "zookeeper_hosts": link.hosts})
    node = NodeDaemon(settings)
    converge_all = Reconciler.converge_all

    def cut_first(reconciler, *args, **kwargs):
        link.cut()
        return converge_all(reconciler, *args, **kwargs)
    mocker.patch.object(Reconciler, "converge_all", cut_first)
    try:
        with pytest.raises(Exception) as failed:
            node.start()
        still_running = running_hosts(fresh_cluster).get("outlived", [])
    finally:
        link.restore()
        link.close()
    assert node.self_fence.fenced_reason, f"the start failed ({failed.value!r}) and left without a self-fence"
    assert still_running == [], f"the start left with its guest running on {still_running}"


def test_a_libvirt_call_that_ended_late_does_not_make_a_node_destroy_a_vm_it_moves_away(cluster, mocker):
    """A read of the VM that outlived hv1's libvirt deadline ends, and the VM is then placed on hv2 while its
    last report still says it runs on hv1: hv1 moves it (`_let_go`), it does not destroy it first as a copy
    it no longer holds (on a QEMU host that is a guest powered off in the middle of a live migration)."""
    client = cluster.client
    client.vms.define(vm_xml("leaving"), target="hv1")
    client.vms.start("leaving", wait=True)
    try:
        with node_in_process(cluster) as node:
            released = threading.Event()
            # The VM's lock keeps every pass off it until the placement has changed.
            with node.reconciler._locks["leaving"]:
                with pytest.raises(PVCError, match="did not answer"):
                    node.hypervisor.call("metadata read", lambda: released.wait(5), timeout=0.2, domain="leaving")
                released.set()
                assert eventually(lambda: node.hypervisor.ended_late("leaving"), 5)
                destroyed = mocker.spy(DomainActions, "stop")
                moving = threading.Thread(target=client.vms.migrate, args=("leaving", "hv2"), daemon=True)
                moving.start()
                assert eventually(lambda: client.vms.info("leaving")["node"] == "hv2", 10)
            moving.join(30)
            wait_running_on(cluster, "leaving", "hv2")
            assert destroyed.call_count == 0, "hv1 destroyed the VM it was moving away"
    finally:
        client.vms.remove("leaving", force=True)
