"""Draining nodes and losing node daemons, with VMs on them: flush and ready, and kill -9 of pvcnoded.

Where VMs run is read from each host's own libvirtd; no VM may ever run on two hosts.
"""
from collections import Counter

import pytest

from helpers import eventually
from vm_support import (assert_no_vm_on_two_hosts, every_daemon_running_and_no_vms_left,
                        fence_deadline_beyond_restarts, pvc, restart_node_daemon, running_hosts, vm_xml,
                        wait_running_on)


@pytest.fixture(scope="module", autouse=True)
def restarts_never_fenced(cluster):
    fence_deadline_beyond_restarts(cluster)


@pytest.fixture(autouse=True)
def no_vms_left(cluster):
    yield
    every_daemon_running_and_no_vms_left(cluster)


def start_on(cluster, node: str, names: list[str], **meta) -> None:
    for name in names:
        cluster.client.vms.define(vm_xml(name), target=node, **meta)
        cluster.client.vms.start(name)
    assert eventually(lambda: all(running_hosts(cluster).get(name) == [node] for name in names), 20, 0.2), \
        running_hosts(cluster)


def test_flushing_a_node_with_20_vms_spreads_them_over_the_others_and_ready_brings_them_back(cluster):
    names = [f"tenant{index:02d}" for index in range(20)]
    start_on(cluster, "hv1", names)

    flushed = pvc(cluster, "node", "flush", "hv1", "--wait")

    assert flushed.exit_code == 0, flushed.output
    assert "flush of hv1: done; moved 20 VM(s)" in flushed.stdout and "shut down" not in flushed.stdout
    where = assert_no_vm_on_two_hosts(cluster)
    assert sorted(where) == names, "all 20 still run"
    per_node = Counter(nodes[0] for nodes in where.values())
    assert set(per_node) == {"hv2", "hv3"} and per_node["hv2"] >= 8 and per_node["hv3"] >= 8, \
        f"spread by the selector, not piled onto one node: {per_node}"
    assert cluster.client.nodes.info("hv1")["domain_state"] == "flushed"
    assert all(vm["last_node"] == "hv1" for vm in cluster.client.vms.list())

    readied = pvc(cluster, "node", "ready", "hv1", "--wait")

    assert readied.exit_code == 0, readied.output
    assert eventually(lambda: assert_no_vm_on_two_hosts(cluster) == {name: ["hv1"] for name in names}, 20, 0.2), \
        running_hosts(cluster)
    assert cluster.client.nodes.info("hv1")["domain_state"] == "ready"


def test_a_vm_whose_only_node_is_flushed_is_shut_down_and_ready_starts_it_again_with_autostart(cluster):
    start_on(cluster, "hv2", ["homebody"], node_limit=["hv2"], node_autostart=True)
    start_on(cluster, "hv2", ["stay-down"], node_limit=["hv2"], node_autostart=False)

    flushed = pvc(cluster, "node", "flush", "hv2", "--wait")

    assert flushed.exit_code == 0, flushed.output
    assert "shut down (no valid target): homebody, stay-down" in flushed.stdout
    assert cluster.host_domains("hv2") == {"homebody": False, "stay-down": False}
    assert "homebody" not in running_hosts(cluster) and "stay-down" not in running_hosts(cluster)
    assert cluster.client.vms.info("homebody")["state"] == "shutdown"

    readied = pvc(cluster, "node", "ready", "hv2", "--wait")

    assert readied.exit_code == 0, readied.output
    wait_running_on(cluster, "homebody", "hv2")
    assert cluster.client.vms.info("homebody")["state"] == "start"
    assert cluster.host_domains("hv2")["stay-down"] is False, "without autostart it stays down"
    assert cluster.client.vms.info("stay-down")["state"] == "shutdown"


def test_kill_9_of_pvcnoded_leaves_its_vms_running_and_a_restarted_one_carries_on(cluster):
    start_on(cluster, "hv3", ["keeper", "mover"])
    before = {vm["name"]: (vm["state"], vm["node"]) for vm in cluster.client.vms.list()}

    cluster.local.stop_daemon("pvcnoded", "hv3", kill=True)

    assert cluster.host_domains("hv3") == {"keeper": True, "mover": True}
    assert {vm["name"]: (vm["state"], vm["node"]) for vm in cluster.client.vms.list()} == before
    assert cluster.client.vms.shutdown("keeper")["state"] == "shutdown", "recorded while the node daemon is away"

    restart_node_daemon(cluster, "hv3")

    wait_running_on(cluster, "keeper", None)
    assert cluster.host_domains("hv3") == {"keeper": False, "mover": True}, \
        "the restarted daemon kept mover running and carried out the shutdown it missed"
    assert cluster.client.vms.info("mover")["running"] is True
    assert cluster.client.vms.info("mover")["node"] == "hv3"

    cluster.client.vms.migrate("mover", target="hv1", wait=True)
    wait_running_on(cluster, "mover", "hv1")
    cluster.client.vms.start("keeper", wait=True)
    wait_running_on(cluster, "keeper", "hv3")
    assert_no_vm_on_two_hosts(cluster)


def test_a_command_made_while_a_node_daemon_restarts_still_reaches_its_vm(cluster):
    start_on(cluster, "hv2", ["patient"])

    cluster.local.stop_daemon("pvcnoded", "hv2", kill=True)
    cluster.local.start_node_daemon("hv2")  # not waited for: the command is made while it starts
    migrated = cluster.client.vms.migrate("patient", target="hv1", wait=True)

    assert (migrated["node"], migrated["running"]) == ("hv1", True)
    wait_running_on(cluster, "patient", "hv1")


def test_defines_without_a_target_go_where_least_is_placed_already_and_a_removal_frees_its_share(cluster):
    first = [f"placed{index}" for index in range(9)]
    for name in first:
        cluster.client.vms.define(vm_xml(name), node_selector="memprov")

    placed = {vm["name"]: vm["node"] for vm in cluster.client.vms.list()}
    assert sorted(Counter(placed[name] for name in first).values()) == [3, 3, 3], \
        f"nine defines in a row, before any node reports them, are spread by what is placed already: {placed}"

    for name in [name for name in first if placed[name] == "hv2"]:
        cluster.client.vms.remove(name, wait=True)
    again = [f"again{index}" for index in range(3)]
    for name in again:
        cluster.client.vms.define(vm_xml(name), node_selector="memprov")

    placed = {vm["name"]: vm["node"] for vm in cluster.client.vms.list()}
    assert [placed[name] for name in again] == ["hv2"] * 3, placed
