"""A partition, not just a kill: a host cut off from the rest of the cluster by its network link.

The cluster runs on its lab network: every host, coordinator and ZooKeeper server in a network namespace of its
own, joined to the lab bridge by a veth pair. Cutting hv1's link (the root side of its veth down) drops every
packet both ways, as a pulled cable does: hv1 reaches neither ZooKeeper nor its peers, while its BMC, on the
lab's gateway, still answers the leader.
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from faults.checker import double_runs, runs
from faults.history import History
from faults.monitor import HostGate, Monitor
from pvc.cli.localcluster.cluster import LocalCluster
from test_self_fencing import FENCE_DEADLINE_S, SELF_FENCE_DEADLINE_S, _self_fence_log, _vms_on, cut_and_watch
from vm_support import assert_no_vm_on_two_hosts, wait_running_on


@dataclass
class LabLink:
    """One lab member's cable, as `cut_and_watch` pulls and plugs it."""
    local: LocalCluster
    member: str

    def cut(self) -> None:
        self.local.cut_link(self.member)

    def restore(self) -> None:
        self.local.heal_link(self.member)


@pytest.fixture
def partitioned_node(fresh_cluster):
    """(cluster, hv1's link) on a fresh lab cluster."""
    local = fresh_cluster.local
    assert local.lab.address("hv1") in fresh_cluster.client.nodes.info("hv1")["agent_uri"]
    yield fresh_cluster, LabLink(local, "hv1")


@pytest.mark.cluster(nodes=3, lab=True)
def test_a_partitioned_host_stops_its_vms_before_the_leaders_deadline_is_fenced_and_resumes_nothing(
        partitioned_node):
    cluster, link = partitioned_node
    client, local = cluster.client, cluster.local
    names = ["part1", "part2", "part3"]
    _vms_on(client, "hv1", names)
    history = History()
    monitor = Monitor(local, history, {node: HostGate() for node in local.node_names}).start()
    try:
        cut_at, stopped_seen_at, dead_at, recovery = cut_and_watch(cluster, link, names)
        placed = {name: client.vms.info(name)["node"] for name in names}
        for name, node in placed.items():
            assert node in ("hv2", "hv3"), placed
            wait_running_on(cluster, name, node)
    finally:
        monitor.stop()
    assert recovery["fence"][0]["policy"] == "ipmi" and recovery["fence"][0]["confirmed"], recovery
    assert client.nodes.info("hv1")["daemon_state"] == "fenced"
    assert not double_runs(history), [str(violation) for violation in double_runs(history)]
    started_elsewhere = {name: [run.host for run in found if run.host != "hv1"]
                         for name, found in runs(history.samples).items() if name in names}
    assert started_elsewhere == {name: [node] for name, node in placed.items()}, \
        "each of hv1's VMs is started once elsewhere, on the node its record names"
    assert_no_vm_on_two_hosts(cluster)
    decisions = _self_fence_log(local, "hv1")
    assert any("cut off from ZooKeeper: no keepalive acknowledged for" in line and "no peer answered" in line
               for line in decisions), decisions
    print("\n" + "\n".join(decisions))
    print(f"partitioned hv1 self-fenced (seen from its libvirtd) {stopped_seen_at - cut_at:.2f} s after the cut; "
          f"marked dead {dead_at - cut_at:.2f} s after it (self-fence deadline {SELF_FENCE_DEADLINE_S:g} s, "
          f"fence deadline {FENCE_DEADLINE_S:g} s, both from the last acknowledged keepalive)")
