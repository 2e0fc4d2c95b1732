"""A recovery starts at most `recovery_starts_per_node` VMs at once on any one node, however many it moves there.

A real two-node cluster (test-driver hosts): hv1's pvcnoded is killed, its host powered off and the fence
confirmed by hand (no fencing chain: the BMC's timing is not what this test is about), and the leader recovers
its VMs, all onto hv2. The leader runs in the test process, its calls to
node agents each held up a little (so that a start takes a while); the test watches, as often as it can, which
VMs are placed on hv2 (ZooKeeper) and not yet running in hv2's own libvirtd: the starts under way there.
"""
import threading
import time

import pytest

from pvc import schema
from pvc.rpc import recovery
from pvc.rpc.agents import NodeAgents

from coordinator_support import coordinator_in_process
from helpers import cluster_store, eventually
from test_fencing import DETECTION_S
from vm_support import assert_no_vm_on_two_hosts, vm_xml, wait_running_on

BOUND = 3
VMS = [f"recovered{index}" for index in range(9)]
CALL_DELAY_S = 0.5


class StartsUnderWay:
    """Polls which of `VMS` are placed on `node` and not running in its libvirtd; keeps the most at once."""

    def __init__(self, cluster, store, node: str):
        self._cluster, self._store, self._node = cluster, store, node
        self._stop = threading.Event()
        self.most: list[str] = []
        self.polls = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "StartsUnderWay":
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            # Placements first: a VM placed then, and not running in libvirt after, was under way then.
            placed = [name for name in VMS
                      if (self._store.read(schema.vm_key(name, "placement")) or {}).get("node") == self._node]
            running = self._cluster.host_domains(self._node)
            under_way = [name for name in placed if not running.get(name)]
            if len(under_way) > len(self.most):
                self.most = under_way
            self.polls += 1
            time.sleep(0.02)


@pytest.mark.cluster(nodes=2)
def test_a_recovery_of_more_vms_than_the_bound_starts_at_most_the_bound_at_once_on_its_target(fresh_cluster,
                                                                                             mocker):
    local = fresh_cluster.local
    with coordinator_in_process(local, recovery_starts_per_node=BOUND) as (_coordinator, client):
        client.cluster.config(fence_chain=["none"])
        for name in VMS:
            client.vms.define(vm_xml(name), target="hv1")
            client.vms.start(name, wait=True)
        call = NodeAgents.call

        def held(agents, *args, **kwargs):
            time.sleep(CALL_DELAY_S)
            return call(agents, *args, **kwargs)
        mocker.patch.object(NodeAgents, "call", held)

        local.stop_daemon("pvcnoded", "hv1", kill=True)
        assert eventually(lambda: client.nodes.info("hv1")["daemon_state"] == "dead", DETECTION_S)
        local.host("hv1").power_off()  # the administrator makes sure it is off
        with cluster_store(local) as store, StartsUnderWay(fresh_cluster, store, "hv2") as starts:
            client.nodes.fence_confirm("hv1")
            recovery = eventually(lambda: (lambda task: task if task and task["state"] == "done" else None)(
                client.nodes.info("hv1")["recovery"]), 20, 0.2)
        assert recovery, client.nodes.info("hv1")

        print(f"\nrecovery of {len(VMS)} VMs onto hv2, bound {BOUND}: at most {len(starts.most)} starting at once "
              f"({', '.join(starts.most)}) over {starts.polls} polls")
        task = client.nodes.task(recovery["id"])
        assert sorted(task["moved"]) == VMS and task["errors"] == [] and task["total"] == task["done"] == len(VMS)
        assert 2 <= len(starts.most) <= BOUND, "several starts at once, never more than the bound"
        for name in VMS:
            wait_running_on(fresh_cluster, name, "hv2")
        assert_no_vm_on_two_hosts(fresh_cluster)


@pytest.mark.cluster(nodes=3)
def test_a_recovery_whose_chosen_node_dies_meanwhile_starts_the_rest_on_a_node_that_runs(fresh_cluster):
    """hv1's recovery chooses hv2 and hv3 for its VMs, one start at a time on each; hv2 dies before its second
    VM's turn, and hv2's own recovery moves the first to hv3. The second is then started on hv3, not recorded on
    hv2, whose recovery had listed its VMs already: it had stayed down there for the start's whole deadline."""
    local = fresh_cluster.local
    names = [f"chosen{index}" for index in range(4)]
    with coordinator_in_process(local, recovery_starts_per_node=1) as (_coordinator, client):
        client.cluster.config(fence_chain=["none"])
        for name in names:
            client.vms.define(vm_xml(name), target="hv1")
            client.vms.start(name, wait=True)
        local.stop_daemon("pvcnoded", "hv1", kill=True)
        assert eventually(lambda: client.nodes.info("hv1")["daemon_state"] == "dead", DETECTION_S)
        local.host("hv1").power_off()
        local.stop_daemon("pvcnoded", "hv2", kill=True)  # before anyone has noticed: still chosen
        client.nodes.fence_confirm("hv1")
        assert eventually(lambda: [name for name in names if client.vms.info(name)["node"] == "hv2"], 10), \
            "the recovery chose no VM for hv2 (else this test proves nothing)"
        assert eventually(lambda: client.nodes.info("hv2")["daemon_state"] == "dead", DETECTION_S)
        local.host("hv2").power_off()
        client.nodes.fence_confirm("hv2")
        for name in names:
            wait_running_on(fresh_cluster, name, "hv3", timeout=30)
        for node in ("hv1", "hv2"):
            assert eventually(lambda: (client.nodes.info(node)["recovery"] or {}).get("state") == "done", 10), \
                client.nodes.info(node)["recovery"]
        assert_no_vm_on_two_hosts(fresh_cluster)


@pytest.mark.cluster(nodes=3)
def test_a_target_that_stops_running_between_the_recoverys_look_and_its_record_is_not_recorded(fresh_cluster,
                                                                                                mocker):
    """The recovery looks at its chosen node's state, then records the start there. That node is marked dead
    right between the two (here by the test, as the leader's monitor would): the record, which checks the state
    it looked at, fails, and the VM goes to the other node. Recorded on the dead node, its start had waited on a
    node whose own recovery may have listed its VMs already (here that node's daemon lives on, and would have
    started it: a start on a node marked dead)."""
    local = fresh_cluster.local
    looked = recovery.daemon_state
    marked: list[str] = []

    def marked_dead_right_after(context, node):
        state = looked(context, node)
        if state[0] == "run" and node != "hv1" and not marked:
            with cluster_store(local) as store:
                store.write(schema.node_key(node, "daemon_state"), "dead")
            marked.append(node)
        return state
    with coordinator_in_process(local) as (_coordinator, client):
        client.cluster.config(fence_chain=["none"])
        client.vms.define(vm_xml("between"), target="hv1")
        client.vms.start("between", wait=True)
        mocker.patch.object(recovery, "daemon_state", marked_dead_right_after)
        local.stop_daemon("pvcnoded", "hv1", kill=True)
        assert eventually(lambda: client.nodes.info("hv1")["daemon_state"] == "dead", DETECTION_S)
        local.host("hv1").power_off()
        client.nodes.fence_confirm("hv1")
        assert eventually(lambda: marked, 15), "the recovery chose no node"
        other = next(node for node in ("hv2", "hv3") if node != marked[0])
        wait_running_on(fresh_cluster, "between", other, timeout=20)
