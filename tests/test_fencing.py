"""A dead node is fenced before anything it ran starts elsewhere; a fence that is not confirmed restarts nothing.

Nodes die the way they do in a machine room: their pvcnoded is killed (the host and its VMs run on, which is
exactly why a VM must not be started twice), or their host loses power. The truth is each host's own
libvirtd.
"""
import os
import signal
import time
from pathlib import Path

import pytest

from pvc import schema
from pvc.cli.localcluster.cluster import FENCE_INTERVALS, KEEPALIVE_INTERVAL
from pvc.cli.localcluster.pidfiles import process_cmdline
from pvc.cli.localcluster.processes import pid_alive

from conftest import started_cluster
from guest_support import boot_guests, wait_heartbeat
from helpers import cluster_store, eventually
from test_self_fencing import FENCE_DEADLINE_S, DaemonStates, ZooKeeperLink
from vm_support import assert_no_vm_on_two_hosts, restart_node_daemon, running_hosts, vm_xml, wait_running_on

DETECTION_S = (FENCE_INTERVALS + 2) * KEEPALIVE_INTERVAL + 2


def _recovery(client, node: str, state: str, timeout: float = DETECTION_S + 10) -> dict:
    found = eventually(lambda: (lambda recovery: recovery if recovery and recovery["state"] == state else None)(
        client.nodes.info(node)["recovery"]), timeout, interval=0.2)
    assert found, f"{node}'s recovery is not {state}: {client.nodes.info(node)}"
    return found


def _vms_on(client, node: str, names: list[str]) -> None:
    for name in names:
        client.vms.define(vm_xml(name), target=node)
        client.vms.start(name, wait=True)


@pytest.mark.cluster(nodes=3)
def test_a_fence_that_is_not_confirmed_restarts_nothing_until_an_administrator_confirms(fresh_cluster):
    client, local = fresh_cluster.client, fresh_cluster.local
    client.cluster.config(fence_chain=["none"])
    names = ["stranded1", "stranded2"]
    _vms_on(client, "hv1", names)

    local.stop_daemon("pvcnoded", "hv1", kill=True)

    recovery = _recovery(client, "hv1", "failed")
    assert "fencing disabled" in recovery["reason"] and recovery["fence"][0]["confirmed"] is False
    assert client.nodes.info("hv1")["daemon_state"] == "dead"
    assert not eventually(lambda: any(running_hosts(fresh_cluster).get(name) != ["hv1"] for name in names),
                          3 * KEEPALIVE_INTERVAL), "nothing restarts while the node may still run its VMs"

    local.host("hv1").power_off()  # the administrator makes sure it is off
    client.nodes.fence_confirm("hv1")

    for name in names:
        node = eventually(lambda: (lambda vm: vm["node"] if vm["node"] != "hv1" and vm["running"] else None)(
            client.vms.info(name)), 20)
        assert node, client.vms.info(name)
        wait_running_on(fresh_cluster, name, node)
    assert client.nodes.info("hv1")["daemon_state"] == "fenced"
    done = _recovery(client, "hv1", "done")
    assert sorted(done["moved"]) == names, "moved in any order: its starts run side by side"
    with cluster_store(local) as store:
        fenced_at = store.zk.exists(schema.node_key("hv1", "daemon_state")).mzxid
        recorded_at = store.zk.exists(schema.task(done["id"])).czxid
    assert recorded_at == fenced_at, "the recovery is recorded in the confirmation's own transaction"
    assert_no_vm_on_two_hosts(fresh_cluster)


@pytest.mark.cluster(nodes=3)
def test_in_maintenance_a_dead_node_is_not_fenced_and_once_it_ends_it_is_fenced_and_recovered(fresh_cluster):
    client, local = fresh_cluster.client, fresh_cluster.local
    client.cluster.maintenance(True)
    _vms_on(client, "hv2", ["kept-home"])

    local.stop_daemon("pvcnoded", "hv2", kill=True)

    assert eventually(lambda: client.nodes.info("hv2")["daemon_state"] == "dead", DETECTION_S)
    assert not eventually(lambda: client.nodes.info("hv2")["recovery"], 3 * KEEPALIVE_INTERVAL)
    assert running_hosts(fresh_cluster) == {"kept-home": ["hv2"]}
    assert client.vms.info("kept-home")["node"] == "hv2"
    assert local.host("hv2").running

    client.cluster.maintenance(False)

    recovery = _recovery(client, "hv2", "done")
    assert [(level["policy"], level["confirmed"]) for level in recovery["fence"]] == [("ipmi", True)]
    assert recovery["moved"] == ["kept-home"] and not local.host("hv2").running
    assert client.nodes.info("hv2")["daemon_state"] == "fenced"
    wait_running_on(fresh_cluster, "kept-home", client.vms.info("kept-home")["node"])
    assert client.vms.info("kept-home")["node"] in ("hv1", "hv3")


@pytest.mark.cluster(nodes=3)
def test_when_most_nodes_look_dead_at_once_none_is_fenced(fresh_cluster):
    client, local = fresh_cluster.client, fresh_cluster.local
    _vms_on(client, "hv1", ["crowd1"])
    _vms_on(client, "hv2", ["crowd2"])

    local.stop_daemon("pvcnoded", "hv1", kill=True)
    local.stop_daemon("pvcnoded", "hv2", kill=True)

    both = eventually(lambda: all(client.nodes.info(node)["daemon_state"] == "dead" for node in ("hv1", "hv2")),
                      DETECTION_S)
    assert both
    reasons = [(client.nodes.info(node)["recovery"] or {}).get("reason") or "" for node in ("hv1", "hv2")]
    assert any("2 of 3 nodes look dead at once" in reason for reason in reasons), reasons
    assert not eventually(lambda: running_hosts(fresh_cluster) != {"crowd1": ["hv1"], "crowd2": ["hv2"]},
                          3 * KEEPALIVE_INTERVAL), "nothing was fenced, so nothing moved"
    assert all(client.nodes.info(node)["daemon_state"] == "dead" for node in ("hv1", "hv2"))


@pytest.fixture
def qemu_fencing_cluster(tmp_path_factory):
    yield from started_cluster(tmp_path_factory.mktemp("qemu-fence"), nodes=3, coordinators=1, hypervisor="qemu")


def test_a_dead_qemu_host_is_fenced_through_its_bmc_and_its_real_guests_boot_elsewhere(qemu_fencing_cluster):
    cluster = qemu_fencing_cluster
    client, local = cluster.client, cluster.local
    names = ["real1", "real2", "real3"]
    boots = boot_guests(cluster, "hv1", names)
    pids = local.host("hv1").qemu_pids()
    assert set(names) <= set(pids)

    local.stop_daemon("pvcnoded", "hv1", kill=True)

    recovery = _recovery(client, "hv1", "done", timeout=DETECTION_S + 60)
    assert recovery["fence"][0]["policy"] == "ipmi" and recovery["fence"][0]["confirmed"]
    assert client.nodes.info("hv1")["daemon_state"] == "fenced"
    assert not local.host("hv1").running and not any(pid_alive(pid) for pid in pids.values()), \
        "the fence powered the host off: every QEMU process in it is gone"
    for name in names:
        node = client.vms.info(name)["node"]
        assert node in ("hv2", "hv3")
        beat = wait_heartbeat(cluster, name, node)
        assert beat.boot_id != boots[name].boot_id, f"{name} booted again on {node}"
        wait_running_on(cluster, name, node)
    assert_no_vm_on_two_hosts(cluster)

    # The same guests, now on hv2 and hv3: a host cut off from ZooKeeper kills its real guests itself (QEMU
    # processes gone) before the leader marks it dead, and they boot on the last host.
    cut = next(node for node in ("hv2", "hv3") if local.host(node).qemu_pids())
    last = next(node for node in ("hv2", "hv3") if node != cut)
    isolated = sorted(local.host(cut).qemu_pids())
    link = ZooKeeperLink(local.state["zookeeper_port"])
    try:
        local.stop_daemon("pvcnoded", cut)
        restart_node_daemon(cluster, cut, zookeeper_hosts=link.hosts)
        pids = local.host(cut).qemu_pids()
        assert sorted(pids) == isolated, "the guests outlived the restart of their node daemon"
        with cluster_store(local) as store:
            states = DaemonStates(store, cut)
            link.cut()
            assert eventually(lambda: not any(pid_alive(pid) for pid in pids.values()), FENCE_DEADLINE_S + 5, 0.05)
            gone_at = time.time()
            link.restore()
            assert eventually(lambda: states.when("dead"), DETECTION_S), states.seen
        assert gone_at < states.when("dead"), "the guests died before the leader marked their host dead"
        _recovery(client, cut, "done", timeout=DETECTION_S + 60)
        for name in isolated:
            wait_running_on(cluster, name, last, timeout=30)
            assert wait_heartbeat(cluster, name, last).boot_id != boots[name].boot_id
    finally:
        link.close()
    assert_no_vm_on_two_hosts(cluster)


@pytest.mark.cluster(nodes=3)
def test_a_third_party_fencing_policy_is_a_level_of_the_chain(example_plugin_installed, fresh_cluster):
    client, local = fresh_cluster.client, fresh_cluster.local
    client.cluster.config(fence_chain=["none", "example-ipmitool"])
    _vms_on(client, "hv1", ["rescued"])

    local.stop_daemon("pvcnoded", "hv1", kill=True)

    recovery = _recovery(client, "hv1", "done")
    assert [(level["policy"], level["confirmed"]) for level in recovery["fence"]] == \
        [("none", False), ("example-ipmitool", True)]
    assert recovery["fence"][1]["explanation"].startswith("example: Chassis Power is off")
    assert not local.host("hv1").running
    node = eventually(lambda: (lambda vm: vm["node"] if vm["running"] and vm["node"] != "hv1" else None)(
        client.vms.info("rescued")), 20)
    assert node, client.vms.info("rescued")
    wait_running_on(fresh_cluster, "rescued", node)


def _ipmitool_of(pid: int) -> list[str] | None:
    """The command line of an ipmitool that process `pid` runs, if any."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and pid_alive(int(entry.name)):
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            argv = process_cmdline(int(entry.name))
            if parent == pid and argv and Path(argv[0]).name == "ipmitool":
                return argv
    return None


def _kill_leader(fresh_cluster) -> str:
    client, local = fresh_cluster.client, fresh_cluster.local
    leader = client.cluster.status()["leader"]
    local.stop_daemon("pvcapid", leader, kill=True)
    assert eventually(lambda: client.cluster.status()["leader"] not in (None, leader), 15, 0.2)
    return leader


@pytest.mark.cluster(nodes=3, coordinators=3)
def test_a_recovery_whose_leader_dies_in_the_fence_and_then_in_the_moves_is_finished_by_the_next_leaders(
        fresh_cluster):
    """Each leader is killed at a point the test holds it at: the first while its ipmitool waits for a BMC
    frozen with SIGSTOP (the fence begun, not done), the second once the fence is confirmed and the moves to
    hv3 are made but those to hv2, whose libvirtd is frozen, are not. The third finishes the recovery."""
    client, local = fresh_cluster.client, fresh_cluster.local
    fast, slow = ["fast1", "fast2"], ["slow1", "slow2"]
    for name in fast + slow:
        client.vms.define(vm_xml(name), target="hv1", node_limit=["hv1", "hv3" if name in fast else "hv2"])
        client.vms.start(name, wait=True)
    bmc, target = local.bmc("hv1").pid, local.host("hv2").pid
    os.kill(bmc, signal.SIGSTOP)
    os.kill(target, signal.SIGSTOP)
    try:
        local.stop_daemon("pvcnoded", "hv1", kill=True)
        first = local.daemon_pid("pvcapid", client.cluster.status()["leader"])
        fencing = eventually(lambda: _ipmitool_of(first), DETECTION_S + 5)
        assert fencing and fencing[-3:] == ["chassis", "power", "off"], fencing
        killed_in_fence = client.nodes.info("hv1")
        _kill_leader(fresh_cluster)
        os.kill(bmc, signal.SIGCONT)
        assert killed_in_fence["daemon_state"] == "dead" and killed_in_fence["recovery"]["state"] == "running"
        assert killed_in_fence["recovery"]["fence"] == [], "killed with the fence begun, not done"

        def moving():
            recovery = client.nodes.info("hv1")["recovery"]
            task = client.nodes.task(recovery["id"])
            return task if task["total"] == 4 and task["done"] == 2 else None
        killed_in_moves = eventually(moving, 30, 0.1)
        assert killed_in_moves, client.nodes.info("hv1")
        assert killed_in_moves["state"] == "running", killed_in_moves
        assert [level["confirmed"] for level in killed_in_moves["fence"]] == [True] and not local.host("hv1").running
        assert fresh_cluster.host_domains("hv3") == {name: True for name in fast}  # (a client of hv2 would hang)
        _kill_leader(fresh_cluster)
    finally:
        os.kill(bmc, signal.SIGCONT)
        os.kill(target, signal.SIGCONT)

    recovery = _recovery(client, "hv1", "done", timeout=60)
    assert sorted(recovery["moved"]) == sorted(fast + slow)
    for name in slow:
        wait_running_on(fresh_cluster, name, "hv2", timeout=30)
    assert client.nodes.info("hv1")["daemon_state"] == "fenced"
    assert_no_vm_on_two_hosts(fresh_cluster)
