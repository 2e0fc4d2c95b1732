"""pvcnoded on simulated hosts: registration, keepalive figures, and what stopping or killing it does.

Each test works on its own node of the module's cluster and leaves the node running again.
"""
import re
import time
from types import SimpleNamespace

import pytest

from pvc import schema
from pvc.cli.localcluster.cluster import FENCE_INTERVALS, KEEPALIVE_INTERVAL
from pvc.handshake import authenticated_proxy
from pvc.node.daemon import NodeDaemon

from helpers import cluster_store, define_vm, eventually, remove_vm
from vm_support import return_to_service

LEADER_TICK = 0.5


@pytest.fixture
def node_restarted_afterwards(cluster):
    """Names the nodes a test stops; each is started again (and waited for) at teardown."""
    stopped: list[str] = []
    yield stopped
    for name in stopped:
        if cluster.client.nodes.info(name)["daemon_state"] in ("dead", "fenced"):
            return_to_service(cluster, name)
        elif cluster.local.daemon_pid("pvcnoded", name) is None:
            cluster.local.start_node_daemon(name)
    cluster.local.wait_ready(30)


def wait_for_state(cluster, node: str, state: str, timeout: float) -> dict:
    info = eventually(lambda: (lambda n: n if n["daemon_state"] == state else None)(cluster.client.nodes.info(node)),
                      timeout)
    assert info, f"{node} not {state} after {timeout} s: {cluster.client.nodes.info(node)}"
    return info


def test_a_node_registers_with_its_agent_uri_and_facts(cluster):
    node = cluster.client.nodes.info("hv1")

    assert node["name"] == "hv1"
    assert (node["daemon_state"], node["domain_state"]) == ("run", "ready")
    assert node["cpus"] == 16 and node["memory_total_mib"] == 65536
    assert re.fullmatch(r"\d+\.\d+\.\d+", node["libvirt_version"])
    assert node["simulated"] is True and node["hypervisor"] == "TEST"
    assert node["keepalive_interval_s"] == KEEPALIVE_INTERVAL
    assert node["keepalive_age_s"] is not None and node["keepalive_age_s"] < 3 * KEEPALIVE_INTERVAL
    assert node["agent_uri"].startswith("PYRO:pvc.node@127.0.0.1:")
    agent = authenticated_proxy(node["agent_uri"], cluster.local.state["cluster_secret"], 5)
    with agent:
        assert agent.ping() == "hv1"


def test_keepalives_report_what_the_vms_on_the_host_hold(cluster):
    uri = cluster.local.host("hv1").uri
    define_vm(uri, "figures-a", memory_mib=1024, vcpus=2)
    define_vm(uri, "figures-b", memory_mib=2048, vcpus=4)
    define_vm(uri, "figures-c", memory_mib=512, vcpus=1, start=False)
    try:
        node = eventually(lambda: (lambda n: n if n["vms_defined"] == 3 else None)(cluster.client.nodes.info("hv1")),
                          timeout=3 * KEEPALIVE_INTERVAL)
        assert node, cluster.client.nodes.info("hv1")
        assert node["memory_allocated_mib"] == 3072
        assert node["memory_provisioned_mib"] == 3584
        assert node["memory_free_mib"] == 65536 - 3072
        assert node["vcpus_allocated"] == 6
        assert node["vms_running"] == 2
        # The test driver reports wall-clock time as each running domain's CPU time: one CPU second per second.
        loaded = eventually(lambda: 1.8 <= cluster.client.nodes.info("hv1")["load"] <= 2.2, 3 * KEEPALIVE_INTERVAL)
        assert loaded, f"load is the CPU its guests use: {cluster.client.nodes.info('hv1')['load']}"
        other = cluster.client.nodes.info("hv2")
        assert (other["vms_running"], other["memory_allocated_mib"]) == (0, 0)
    finally:
        for name in ("figures-a", "figures-b", "figures-c"):
            remove_vm(uri, name)
    assert eventually(lambda: cluster.client.nodes.info("hv1")["vms_defined"] == 0, 3 * KEEPALIVE_INTERVAL)
    assert cluster.client.nodes.info("hv1")["memory_free_mib"] == 65536


def test_sigterm_stops_the_node_and_leaves_its_vms_running_then_a_restart_carries_on(
        cluster, node_restarted_afterwards):
    uri = cluster.local.host("hv2").uri
    define_vm(uri, "survivor", memory_mib=1024, vcpus=2)
    with cluster_store(cluster.local) as store:
        store.write(schema.node_key("hv2", "domain_state"), "flushed")
    node_restarted_afterwards.append("hv2")
    try:
        cluster.local.stop_daemon("pvcnoded", "hv2")

        wait_for_state(cluster, "hv2", "stop", timeout=2)
        assert cluster.host_domains("hv2") == {"survivor": True}
        time.sleep((FENCE_INTERVALS + 1) * KEEPALIVE_INTERVAL + LEADER_TICK)
        assert cluster.client.nodes.info("hv2")["daemon_state"] == "stop", "a stopped node is never marked dead"

        cluster.local.start_node_daemon("hv2")

        node = wait_for_state(cluster, "hv2", "run", timeout=10)
        assert node["domain_state"] == "flushed", "a restarted node keeps its domain state"
        assert eventually(lambda: cluster.client.nodes.info("hv2")["vms_running"] == 1, 3 * KEEPALIVE_INTERVAL)
        assert cluster.host_domains("hv2") == {"survivor": True}
        agent = authenticated_proxy(cluster.client.nodes.info("hv2")["agent_uri"],
                                    cluster.local.state["cluster_secret"], 5)
        with agent:
            assert [domain["name"] for domain in agent.domains()] == ["survivor"]
    finally:
        remove_vm(uri, "survivor")
        with cluster_store(cluster.local) as store:
            store.write(schema.node_key("hv2", "domain_state"), "ready")


def test_a_killed_node_daemon_leaves_its_vms_running_until_the_leader_marks_it_dead_and_fences_it(
        cluster, node_restarted_afterwards):
    uri = cluster.local.host("hv3").uri
    define_vm(uri, "orphan", memory_mib=512, vcpus=1)
    node_restarted_afterwards.append("hv3")
    try:
        cluster.local.stop_daemon("pvcnoded", "hv3", kill=True)
        killed_at = time.monotonic()

        assert cluster.host_domains("hv3") == {"orphan": True}
        assert cluster.client.nodes.info("hv3")["daemon_state"] == "run", "nothing is decided before the deadline"
        deadline = FENCE_INTERVALS * KEEPALIVE_INTERVAL + LEADER_TICK + 1
        wait_for_state(cluster, "hv3", "dead", timeout=deadline + 1)
        assert time.monotonic() - killed_at <= deadline + 1
        assert cluster.host_domains("hv3") == {"orphan": True}
        assert {node["name"]: node["daemon_state"] for node in cluster.client.nodes.list()} == \
            {"hv1": "run", "hv2": "run", "hv3": "dead"}

        fenced = eventually(lambda: cluster.client.nodes.info("hv3")["daemon_state"] == "fenced", 15)
        assert fenced, cluster.client.nodes.info("hv3")
        assert not cluster.local.host("hv3").running, "the leader fenced it through its BMC: the host is off"
    finally:
        if cluster.local.host("hv3").running and "orphan" in cluster.host_domains("hv3"):
            remove_vm(uri, "orphan")


def test_a_daemon_loop_whose_pass_keeps_failing_tries_again_within_a_few_seconds():
    """A converge pass that fails (libvirtd or ZooKeeper did not answer) is tried again with backoff, but never
    more than a few seconds later: until it succeeds, a VM's report from its node waits for it."""
    waits: list[float] = []

    class Stopping:
        def wait(self, delay: float) -> bool:
            waits.append(delay)
            return len(waits) > 12

    def failing_pass() -> None:
        raise OSError("libvirtd did not answer")

    loop = SimpleNamespace(fencing=SimpleNamespace(keepalive_interval=1.0), _stopping=Stopping())
    NodeDaemon._every_interval(loop, failing_pass, "converging")

    assert waits[:3] == [1.0, 2.0, 4.0] and max(waits) <= 5, f"waits between failed passes: {waits}"
