"""A node added to a running cluster joins its managed networks' overlays: the nodes already there flood to it,
it floods to them, and traffic crosses between it and them (`pvc-local add-node`: a new host in the lab, its BMC
and its pvcnoded, as an administrator adds a hypervisor)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest

from conftest import RunningCluster, started_cluster
from helpers import eventually
from test_networks import NET, in_host, nic_xml, ok, pings, pvc, pvc_devices, route_on


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory) -> Iterator[RunningCluster]:
    for cluster in started_cluster(Path(tmp_path_factory.mktemp("joining")), nodes=2, coordinators=1, lab=True):
        route_on(cluster, "hv1")
        yield cluster


def floods(cluster, node: str, vni: int) -> set[str]:
    """Where the node's VXLAN device of `vni` floods to (none while it has no such device)."""
    entries = json.loads(in_host(cluster, node, "bridge", "-j", "fdb", "show", "dev", f"pvcvx{vni}", check=False)
                         or "[]")
    return {entry["dst"] for entry in entries if entry["mac"] == "00:00:00:00:00:00"}


def test_a_node_added_to_a_running_cluster_joins_the_overlays_both_ways(two_nodes):
    local, lab = two_nodes.local, two_nodes.local.lab
    ok(pvc(two_nodes, "network", "add", "4700", "-p", "managed", "-d", "joining", "--ipv4", NET.format(247),
           "--gateway4", "169.254.247.1"))
    ok(pvc(two_nodes, "vm", "define", "-", "--target", "hv2", input=nic_xml("before", "joining")))
    assert eventually(lambda: floods(two_nodes, "hv2", 4700) == {lab.address("hv1")}, 10)

    assert local.add_node() == "hv3"
    assert two_nodes.client.nodes.info("hv3")["daemon_state"] == "run"
    everyone = {lab.address(node) for node in ("hv1", "hv2", "hv3")}
    for node in ("hv1", "hv2"):
        assert eventually(lambda: floods(two_nodes, node, 4700) == everyone - {lab.address(node)}, 10), \
            f"{node} does not flood to the new node: {floods(two_nodes, node, 4700)}"

    ok(pvc(two_nodes, "vm", "define", "-", "--target", "hv3", input=nic_xml("after", "joining")))
    assert eventually(lambda: "pvcbr4700" in pvc_devices(two_nodes, "hv3"), 10)
    # The node makes the bridge first and its member's flood entries last.
    assert eventually(lambda: floods(two_nodes, "hv3", 4700) == everyone - {lab.address("hv3")}, 10), \
        f"the new node does not flood to the others: {floods(two_nodes, 'hv3', 4700)}"
    # Addresses on the hosts' bridges stand in for guests (the QEMU tests use real ones).
    in_host(two_nodes, "hv2", "ip", "addr", "add", "169.254.247.12/24", "dev", "pvcbr4700")
    in_host(two_nodes, "hv3", "ip", "addr", "add", "169.254.247.13/24", "dev", "pvcbr4700")
    assert eventually(lambda: pings(two_nodes, "hv3", "169.254.247.12"), 5), "no traffic from the new node"
    assert eventually(lambda: pings(two_nodes, "hv3", "169.254.247.1"), 5), "the gateway does not answer it"
