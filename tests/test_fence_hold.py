"""A fenced node starts nothing until `node ready` releases it, even once its host runs again.

A fence powers the host off; its BMC may power it on again at once (`power_on_after`, a power-restore policy,
an operator), and its pvcnoded starts with the host, while its recovery is still moving its VMs. The truth is
each host's own libvirtd, sampled all along by the fault checker's monitor.
"""
import pytest

from pvc import schema
from pvc.cli.localcluster.cluster import FENCE_INTERVALS, KEEPALIVE_INTERVAL
from pvc.errors import Conflict

from faults.checker import double_runs
from faults.history import History
from faults.monitor import HostGate, Monitor
from helpers import cluster_store, eventually
from vm_support import assert_no_vm_on_two_hosts, pvc, vm_xml, wait_for_task, wait_runs_again, wait_running_on

DETECTION_S = (FENCE_INTERVALS + 2) * KEEPALIVE_INTERVAL + 2


def _vms_on(client, node: str, names: list[str]) -> None:
    for name in names:
        client.vms.define(vm_xml(name), target=node)
        client.vms.start(name, wait=True)


def _rebooted_after_its_fence(cluster, node: str, agent_before: str) -> None:
    """Until the node's host runs again with a new pvcnoded that has registered (a new agent URI)."""
    local = cluster.local
    assert eventually(lambda: not local.host(node).running, DETECTION_S + 10, 0.1), "the fence powered it off"
    assert eventually(lambda: local.host(node).running and local.daemon_pid("pvcnoded", node)
                      and cluster.client.nodes.info(node)["agent_uri"] != agent_before, 30, 0.1), \
        cluster.client.nodes.info(node)


@pytest.mark.cluster(nodes=3)
def test_a_node_powered_on_during_its_recovery_starts_none_of_its_vms_until_node_ready(fresh_cluster):
    cluster, client, local = fresh_cluster, fresh_cluster.client, fresh_cluster.local
    client.cluster.config(fence_options={"ipmi": {"power_on_after": True}})
    names = ["a-stalled", "b-waiting"]
    _vms_on(client, "hv1", names)
    agent_before = client.nodes.info("hv1")["agent_uri"]
    history = History()
    monitor = Monitor(local, history, {node: HostGate() for node in local.node_names}).start()
    try:
        with cluster_store(local) as store:
            # A command holding the first VM's lock stalls the recovery before it places that VM elsewhere (the
            # other is recorded beside it, and moves).
            lock = store.lock(schema.vm_lock("a-stalled"), "a slow command")
            assert lock.acquire(timeout=5)
            try:
                local.stop_daemon("pvcnoded", "hv1", kill=True)
                _rebooted_after_its_fence(cluster, "hv1", agent_before)

                assert not eventually(lambda: any(cluster.host_domains("hv1").values()), 3 * KEEPALIVE_INTERVAL), \
                    f"hv1, fenced and powered on again, started VMs its recovery is moving: " \
                    f"{cluster.host_domains('hv1')}"
                info = wait_runs_again(client, "hv1")
                assert info["recovery"]["state"] in ("pending", "running"), info["recovery"]
                listed = [line.split() for line in pvc(cluster, "node", "list").stdout.splitlines()]
                assert ["hv1", "fenced", "(runs", "again)", "flushed"] == listed[1][:5], listed
                assert "Daemon state:       fenced (its daemon runs again since the fence: `pvc node ready` " \
                       "returns it to service)" in pvc(cluster, "node", "info", "hv1").stdout
                vm = client.vms.info("a-stalled")
                assert (vm["node"], vm["running"]) == ("hv1", False), vm
                with pytest.raises(Conflict, match="recover in progress"):
                    client.nodes.ready("hv1")
            finally:
                lock.release()

        assert eventually(lambda: (client.nodes.info("hv1")["recovery"] or {}).get("state") == "done", 30, 0.2), \
            client.nodes.info("hv1")["recovery"]
        moved = {name: client.vms.info(name)["node"] for name in names}
        for name, node in moved.items():
            assert node in ("hv2", "hv3"), moved
            wait_running_on(cluster, name, node)
        assert not any(cluster.host_domains("hv1").values())
        assert client.nodes.info("hv1")["daemon_state"] == "fenced", "only node ready returns it"

        ready = wait_for_task(client, client.nodes.ready("hv1"))
        assert ready["state"] == "done" and sorted(ready["moved"]) == names, ready
        assert client.nodes.info("hv1")["daemon_state"] == "run"
        for name in names:
            wait_running_on(cluster, name, "hv1")
    finally:
        monitor.stop()
    assert not double_runs(history), [str(violation) for violation in double_runs(history)]
    assert_no_vm_on_two_hosts(cluster)


@pytest.mark.cluster(nodes=3)
def test_with_successful_fence_none_a_rebooted_node_waits_for_node_ready(fresh_cluster):
    cluster, client, local = fresh_cluster, fresh_cluster.client, fresh_cluster.local
    client.cluster.config(fence_options={"ipmi": {"power_on_after": True}})
    client.cluster.config(node="hv1", successful_fence="none")
    _vms_on(client, "hv1", ["stays-home"])
    agent_before = client.nodes.info("hv1")["agent_uri"]

    local.stop_daemon("pvcnoded", "hv1", kill=True)
    _rebooted_after_its_fence(cluster, "hv1", agent_before)

    assert not eventually(lambda: any(cluster.host_domains("hv1").values()), 3 * KEEPALIVE_INTERVAL), \
        "a node fenced with successful_fence none starts its VMs only once node ready returns it"
    wait_runs_again(client, "hv1")
    vm = client.vms.info("stays-home")
    assert (vm["node"], vm["running"]) == ("hv1", False) and "node ready" in vm["last_error"], vm
    assert not any(cluster.host_domains(node).get("stays-home") for node in ("hv2", "hv3"))

    ready = wait_for_task(client, client.nodes.ready("hv1"))
    assert ready["state"] == "done", ready
    wait_running_on(cluster, "stays-home", "hv1")
    assert client.nodes.info("hv1")["daemon_state"] == "run"


@pytest.mark.cluster(nodes=3)
def test_a_claim_does_not_rely_on_the_fence_of_a_node_that_registered_since(fresh_cluster):
    """A node that registered after its fence runs again: whether its VMs still run there only its own report
    says. Its record is written here as its daemon's registration writes it, at the worst moment: between the
    fence and the claim that would have relied on it."""
    cluster, client, local = fresh_cluster, fresh_cluster.client, fresh_cluster.local
    client.cluster.config(fence_chain=["none"])
    _vms_on(client, "hv1", ["behind-a-fence"])
    with cluster_store(local) as store:
        lock = store.lock(schema.vm_lock("behind-a-fence"), "a slow command")
        assert lock.acquire(timeout=5)
        try:
            local.stop_daemon("pvcnoded", "hv1", kill=True)
            local.host("hv1").power_off()
            assert eventually(lambda: (client.nodes.info("hv1")["recovery"] or {}).get("state") == "failed",
                              DETECTION_S + 10, 0.2)
            client.nodes.fence_confirm("hv1")
            store.write(schema.node("hv1"), store.read(schema.node("hv1")))
        finally:
            lock.release()

        target = eventually(lambda: (lambda node: node if node != "hv1" else None)(
            client.vms.info("behind-a-fence")["node"]), 15, 0.1)
        assert target, client.vms.info("behind-a-fence")
        assert not eventually(lambda: cluster.host_domains(target).get("behind-a-fence"), 3 * KEEPALIVE_INTERVAL), \
            "a claim relied on the fence of a node that has registered since"

    local.bmc("hv1").power_on()
    wait_running_on(cluster, "behind-a-fence", target, timeout=30)
    assert not any(cluster.host_domains("hv1").values())
    assert_no_vm_on_two_hosts(cluster)
