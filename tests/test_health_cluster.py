"""Health on a real local cluster: built-in checks listed as plugins, a BMC that stops answering raises a
fault that clears when it answers again, an acknowledged fault stops counting until it happens again,
maintenance raises nothing new, and a third-party check that hangs shows as failed without delaying a
keepalive or leaking threads.

The module's cluster runs the fixture distribution's check that hangs (on every node, from the start), so
that health is checked as what one fault leaves of 100 (`health_but_others`)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import started_cluster
from helpers import cluster_store, eventually

from pvc import schema
from pvc.plugins.health_node import BMCAnswers

BMC_FAULT = "node.hv1.bmc"
HANG_FAULT = "node.hv1.example-hang"


@pytest.fixture(scope="module")
def cluster(example_plugin_installed, tmp_path_factory):
    """A 3-node cluster whose daemons run the fixture distribution's check that hangs: the daemons read
    PVC_EXAMPLE_HANG_CHECK from the environment they start with, so it is set only while they start."""
    os.environ["PVC_EXAMPLE_HANG_CHECK"] = "1"
    running = started_cluster(tmp_path_factory.mktemp("cluster"), nodes=3, coordinators=1)
    try:
        yield next(running)
    finally:
        del os.environ["PVC_EXAMPLE_HANG_CHECK"]
        running.close()


def pvc_cli(cluster, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).with_name("pvc")), *arguments], capture_output=True, text=True,
                          timeout=30, env={**os.environ, "PVC_CONFIG": str(cluster.local.client_config)})


def faults(cluster, all_faults: bool = False) -> dict:
    return {fault["id"]: fault for fault in cluster.client.cluster.faults(all=all_faults)}


def health_but_others(cluster, node: str | None = None, fault_id: str = BMC_FAULT) -> int:
    """The node's (or cluster's) health with the deltas of its counting faults other than `fault_id` given
    back: what that one fault leaves of 100, whatever else a loaded test machine raises meanwhile (a slow
    ZooKeeper round trip)."""
    others = sum(fault["delta"] for fault in cluster.client.cluster.faults()
                 if fault["counts"] and fault["id"] != fault_id and (node is None or fault["node"] == node))
    health = cluster.client.nodes.info(node)["health"] if node else cluster.client.cluster.status()["health"]
    return min(100, health + others)


def test_a_hanging_check_shows_failed_without_delaying_keepalives_or_leaking_threads(cluster):
    local = cluster.local
    fault_id = HANG_FAULT
    fault = eventually(lambda: faults(cluster).get(fault_id), timeout=20)
    assert fault and fault["delta"] == 7 and "did not return within 3 s" in fault["message"]
    pid = local.daemon_pid("pvcnoded", "hv1")
    written = []
    with cluster_store(local) as store:
        path = schema.node_key("hv1", "keepalive")
        deadline = time.monotonic() + 10
        threads_before = len(os.listdir(f"/proc/{pid}/task"))
        while time.monotonic() < deadline:
            written.append(store.read(path)["time"])
            time.sleep(0.1)
        threads_after = len(os.listdir(f"/proc/{pid}/task"))
    beats = sorted(set(written))
    gaps = [later - earlier for earlier, later in zip(beats, beats[1:])]
    later = faults(cluster)[fault_id]
    assert later["count"] >= fault["count"] + 2, "the hanging check was reported failed every round"
    assert "has not returned, so no other is started" in later["message"]
    # Keepalives every 1 s; a keepalive waiting for the check (3 s timeout) would leave a gap of 3 s or more.
    assert max(gaps) < 2.5, gaps
    assert threads_after <= threads_before + 1, (threads_before, threads_after)
    assert health_but_others(cluster, "hv1", fault_id) == 93


def test_a_bmc_fault_is_raised_acknowledged_cleared_and_raised_again(cluster):
    local = cluster.local
    plugins = {plugin["name"]: plugin for plugin in cluster.client.cluster.plugins()}
    assert set(plugins["health_node"]["node_health_checks"]) == {
        "libvirt", "zookeeper", "bmc", "storage", "disk-space", "load", "memory", "version"}
    assert plugins["health_cluster"]["cluster_health_checks"] == ["autobackup", "libvirt", "nodes", "recoveries",
                                                                  "vms", "zookeeper-ensemble"]
    listed = pvc_cli(cluster, "plugin", "list")
    assert "node health check: bmc, disk-space" in listed.stdout, listed.stderr

    time.sleep(2)  # a health round of a healthy cluster (2 s apart) since the cluster is up
    assert BMC_FAULT not in faults(cluster) and health_but_others(cluster) == 100

    bmc = local.bmc("hv1")
    bmc.stop()
    fault = eventually(lambda: faults(cluster).get(BMC_FAULT), timeout=20)
    assert fault and fault["severity"] == "warning" and "does not answer" in fault["message"]
    assert health_but_others(cluster, "hv1") == 90 and health_but_others(cluster, "hv2") == 100
    status = pvc_cli(cluster, "cluster", "status")
    shown = next(line for line in status.stdout.splitlines() if line.startswith("Health")).split()[1]
    assert shown == f"{cluster.client.cluster.status()['health']}%", status.stdout
    assert "warning)" in next(line for line in status.stdout.splitlines() if line.startswith("Faults"))
    assert eventually(lambda: faults(cluster)[BMC_FAULT]["count"] >= 2, timeout=10)
    node_list = pvc_cli(cluster, "node", "list")
    assert [line.split()[3] for line in node_list.stdout.splitlines()[1:4]] == \
        [f"{node['health']}%" for node in cluster.client.nodes.list()]

    acked = pvc_cli(cluster, "cluster", "fault", "ack", BMC_FAULT)
    assert acked.returncode == 0, acked.stderr
    assert health_but_others(cluster) == 100
    assert faults(cluster)[BMC_FAULT]["acknowledged"]

    bmc.start(local.state["bmc_user"], local.state["bmc_password"])
    assert eventually(lambda: BMC_FAULT not in faults(cluster), timeout=20)
    cleared = faults(cluster, all_faults=True)[BMC_FAULT]
    assert cleared["cleared"] and not cleared["active"]

    bmc.stop()
    again = eventually(lambda: faults(cluster).get(BMC_FAULT), timeout=20)
    assert again["count"] == 1 and not again["acknowledged"] and again["counts"]
    assert health_but_others(cluster) == 90

    deleted = pvc_cli(cluster, "cluster", "fault", "delete", BMC_FAULT, "node.hv1.nothing")
    assert deleted.returncode == 1 and "no fault node.hv1.nothing" in deleted.stderr
    assert BMC_FAULT in faults(cluster)

    bmc.start(local.state["bmc_user"], local.state["bmc_password"])
    assert eventually(lambda: BMC_FAULT not in faults(cluster), timeout=20)
    cluster.client.cluster.maintenance(True)
    bmc.stop()
    time.sleep(4)  # two health rounds in maintenance mode
    assert BMC_FAULT not in faults(cluster)
    assert health_but_others(cluster, "hv1") == 100
    cluster.client.cluster.maintenance(False)
    assert eventually(lambda: BMC_FAULT in faults(cluster), timeout=20)
    assert pvc_cli(cluster, "cluster", "fault", "ack-all").returncode == 0
    assert health_but_others(cluster) == 100, "every fault is acknowledged"
    deleted = pvc_cli(cluster, "cluster", "fault", "delete", BMC_FAULT)
    assert deleted.returncode == 0, deleted.stderr
    bmc.start(local.state["bmc_user"], local.state["bmc_password"])


def test_a_node_whose_libvirt_is_lost_shows_stale_figures_then_a_critical_fault(cluster):
    refused = pvc_cli(cluster, "cluster", "config", "--libvirt-lost-after", "1")
    assert refused.returncode == 1 and "libvirt_lost_after setting must be a number of seconds of at least 5" \
        in refused.stderr
    assert cluster.client.cluster.config(node="hv2", libvirt_lost_after=5)["libvirt_lost_overrides"] == \
        {"hv2": {"libvirt_lost_after": 5}}
    libvirtd = cluster.local.host("hv2").pid
    os.kill(libvirtd, signal.SIGSTOP)
    try:
        stale = eventually(lambda: cluster.client.nodes.info("hv2")["figures_stale"], timeout=10)
        assert stale
        listed = pvc_cli(cluster, "node", "list")
        header = listed.stdout.splitlines()[0].split()
        assert next(line for line in listed.stdout.splitlines()
                    if line.startswith("hv2")).split()[header.index("VMS")] == "0*"
        assert "* hv2: figures (stale: libvirt lost" in listed.stdout
        info = pvc_cli(cluster, "node", "info", "hv2")
        assert "(stale: libvirt lost" in next(line for line in info.stdout.splitlines() if "VMs running" in line)
        warning = eventually(lambda: faults(cluster).get("node.hv2.libvirt"), timeout=10)
        assert warning and "libvirt has not answered for" in warning["message"]
        critical = eventually(lambda: (lambda fault: fault if fault and fault["severity"] == "critical" else None)(
            faults(cluster).get("node.hv2.libvirt")), timeout=15)
        assert critical and critical["delta"] == 50 and "libvirt_lost_after 5 s" in critical["message"]
        assert health_but_others(cluster, "hv2", "node.hv2.libvirt") == 50
        assert cluster.client.nodes.info("hv2")["daemon_state"] == "run"
    finally:
        os.kill(libvirtd, signal.SIGCONT)
    assert eventually(lambda: "node.hv2.libvirt" not in faults(cluster), timeout=20)
    assert not cluster.client.nodes.info("hv2")["figures_stale"]
    cluster.client.cluster.config(node="hv2", libvirt_lost_after=None)


def test_when_most_nodes_lose_libvirt_at_once_none_fences_itself_and_the_cluster_has_one_fault(cluster):
    client, local = cluster.client, cluster.local
    client.cluster.config(libvirt_lost_action="fence", libvirt_lost_after=5)
    frozen = [local.host(node).pid for node in ("hv2", "hv3")]
    try:
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        widespread = eventually(lambda: faults(cluster).get("cluster.libvirt"), timeout=20)
        assert widespread and widespread["severity"] == "critical" and "2 of 3" in widespread["message"], widespread
        assert eventually(lambda: all(faults(cluster).get(f"node.{node}.libvirt", {}).get("severity") == "critical"
                                      for node in ("hv2", "hv3")), timeout=15), faults(cluster)
        time.sleep(4)  # two more health rounds past libvirt_lost_after
        assert [client.nodes.info(node)["daemon_state"] for node in ("hv1", "hv2", "hv3")] == ["run"] * 3
        for node in ("hv2", "hv3"):
            log = (local._daemon_dir("nodes", node) / "pvcnoded.log").read_text()
            assert "a cluster-wide event, so this node does not fence itself" in log
            assert "fencing this node itself" not in log
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
        client.cluster.config(libvirt_lost_action="fault", libvirt_lost_after=30)
    assert eventually(lambda: "cluster.libvirt" not in faults(cluster), timeout=20)


@pytest.mark.cluster(nodes=3)
def test_with_libvirt_lost_action_fence_a_node_without_libvirt_fences_itself_and_its_vms_run_elsewhere_once(
        fresh_cluster):
    from faults.checker import double_runs
    from faults.history import History
    from faults.monitor import HostGate, Monitor
    from vm_support import assert_no_vm_on_two_hosts, vm_xml, wait_running_on

    cluster, client, local = fresh_cluster, fresh_cluster.client, fresh_cluster.local
    names = ["lost-a", "lost-b"]
    for name in names:
        client.vms.define(vm_xml(name), target="hv1")
        client.vms.start(name, wait=True)
    client.cluster.config(node="hv1", libvirt_lost_action="fence", libvirt_lost_after=5)
    history = History()
    gates = {node: HostGate() for node in local.node_names}
    monitor = Monitor(local, history, gates).start()
    libvirtd = local.host("hv1").pid
    try:
        assert gates["hv1"].close()
        os.kill(libvirtd, signal.SIGSTOP)
        critical = eventually(lambda: (lambda fault: fault if fault and fault["severity"] == "critical" else None)(
            faults(cluster).get("node.hv1.libvirt")), timeout=20)
        assert critical, faults(cluster)
        assert eventually(lambda: client.nodes.info("hv1")["daemon_state"] == "fenced", timeout=30), \
            client.nodes.info("hv1")
        for name in names:
            vm = eventually(lambda: (lambda vm: vm if vm["node"] != "hv1" else None)(client.vms.info(name)),
                            timeout=20)
            assert vm, client.vms.info(name)
            wait_running_on(cluster, name, vm["node"])
        assert not local.host("hv1").running, "the leader's fence powered the host off"
        log = (local._daemon_dir("nodes", "hv1") / "pvcnoded.log").read_text()
        assert "fencing this node itself (libvirt_lost_action fence)" in log
    finally:
        if local.host("hv1").running:
            os.kill(libvirtd, signal.SIGCONT)
        gates["hv1"].open()
        monitor.stop()
    assert not double_runs(history), [str(violation) for violation in double_runs(history)]
    assert_no_vm_on_two_hosts(cluster)



class _BMCContext:
    """What the BMC check reads of its node: the node's BMC settings and a deadline."""

    def __init__(self, settings: dict, timeout: float = 5.0):
        self.settings, self._deadline = settings, time.monotonic() + timeout

    def deadline_left(self) -> float:
        return self._deadline - time.monotonic()


def test_a_bmc_that_answered_is_asked_again_only_after_bmc_check_interval_and_one_that_did_not_every_round(
        cluster):
    local = cluster.local
    bmc = local.bmc("hv2")
    check = BMCAnswers()
    settings = {**bmc.node_settings(), "bmc_check_interval": 1.5}
    assert check.check(_BMCContext(settings)).delta == 0
    bmc.stop()
    try:
        cached = check.check(_BMCContext(settings))
        assert cached.delta == 0 and "answered 0 s ago (asked every 1.5 s)" in cached.message, \
            "not asked again within the interval: the stopped BMC was not reached"
        time.sleep(1.6)
        failed = check.check(_BMCContext(settings))
        assert failed.delta == 10 and "does not answer" in failed.message
    finally:
        bmc.start(local.state["bmc_user"], local.state["bmc_password"])
    answered = check.check(_BMCContext(settings))
    assert answered.delta == 0 and answered.message.endswith("answers"), "one that failed is asked every round"
