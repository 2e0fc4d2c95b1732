"""A node reports only what it checked, one daemon owns a node name, and the converge loop outlives faults.

The ground truth is each host's own libvirtd; libvirtd is frozen with SIGSTOP (a hung daemon that still holds
its socket), which is what makes a careless node say "not running" about a VM that runs.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pvc import schema
from pvc.errors import Conflict
from pvc.cli.localcluster.cluster import KEEPALIVE_INTERVAL, LIBVIRT_TIMEOUT

from helpers import cluster_store, eventually
from vm_support import (assert_no_vm_on_two_hosts, fence_deadline_beyond_restarts, remove_all_vms,
                        restart_node_daemon, vm_xml, wait_for_task, wait_running_on)


@pytest.fixture(scope="module", autouse=True)
def restarts_never_fenced(cluster):
    fence_deadline_beyond_restarts(cluster)


@pytest.fixture(autouse=True)
def no_vms_left(cluster):
    yield
    remove_all_vms(cluster)


def _freeze(cluster, node: str, frozen: bool) -> None:
    os.kill(cluster.local.host(node).pid, signal.SIGSTOP if frozen else signal.SIGCONT)


def test_a_hung_libvirtd_makes_its_vms_unknown_and_nothing_starts_them_elsewhere(cluster):
    client = cluster.client
    client.vms.define(vm_xml("held"), target="hv1")
    client.vms.start("held", wait=True)
    _freeze(cluster, "hv1", True)
    try:
        unknown = eventually(lambda: (lambda vm: vm if vm["running"] is None else None)(client.vms.info("held")),
                             LIBVIRT_TIMEOUT + 4 * KEEPALIVE_INTERVAL)
        assert unknown, f"a VM on a hung libvirtd is reported {client.vms.info('held')}"
        assert "did not answer" in unknown["unknown"] or "unreachable" in unknown["unknown"]
        listed = {vm["name"]: vm for vm in client.vms.list()}
        assert listed["held"]["running"] is None and listed["held"]["unknown"]

        client.vms.migrate("held", target="hv2")
        # Only the other hosts can be asked (a client of the frozen libvirtd would hang too).
        assert not eventually(lambda: any(cluster.host_domains(node).get("held") for node in ("hv2", "hv3")),
                              3 * KEEPALIVE_INTERVAL), \
            "nothing may start the VM elsewhere while its old node cannot say it is off"
        node = client.nodes.info("hv1")
        assert node["daemon_state"] == "run", "a hung libvirtd does not make the node look dead"
        assert node["keepalive_age_s"] is not None and node["keepalive_age_s"] < 3 * KEEPALIVE_INTERVAL
    finally:
        _freeze(cluster, "hv1", False)

    wait_running_on(cluster, "held", "hv2", timeout=LIBVIRT_TIMEOUT + 15)
    assert eventually(lambda: (lambda vm: vm["running"] is True and vm["unknown"] is None)(client.vms.info("held")),
                      10)
    assert_no_vm_on_two_hosts(cluster)


def test_an_unknown_vm_is_started_elsewhere_neither_by_a_flush_nor_by_vm_start(cluster):
    """Two VMs whose node's libvirtd hangs: one flushed away with the node, one stopped, moved and started on
    another node. Neither starts anywhere else until its old node can say its copy is off."""
    client = cluster.client
    names = ("flushed", "restarted")
    for name in names:
        client.vms.define(vm_xml(name), target="hv1")
        client.vms.start(name, wait=True)
    _freeze(cluster, "hv1", True)
    try:
        assert eventually(lambda: all(client.vms.info(name)["running"] is None for name in names),
                          LIBVIRT_TIMEOUT + 4 * KEEPALIVE_INTERVAL), [client.vms.info(name) for name in names]
        client.vms.stop("restarted")
        # A new name would carry no report, and another node could claim it while the old copy runs on.
        with pytest.raises(Conflict, match="may still run on node hv1 by its last report"):
            client.vms.rename("restarted", "renamed")
        client.vms.move("restarted", target="hv2")
        client.vms.start("restarted")
        flush = client.nodes.flush("hv1")
        started = _seen_running(cluster, ("hv2", "hv3"), 4 * KEEPALIVE_INTERVAL)
        assert not started, f"started elsewhere while its old node cannot say it is off: {started}"
        assert client.nodes.task(flush["id"])["state"] == "running", "the flush waits for the VM it cannot move yet"
    finally:
        _freeze(cluster, "hv1", False)

    wait_running_on(cluster, "restarted", "hv2", timeout=LIBVIRT_TIMEOUT + 15)
    flushed = wait_for_task(client, client.nodes.task(flush["id"]))
    assert flushed["state"] == "done" and flushed["moved"] == ["flushed"], flushed
    assert client.vms.info("flushed")["node"] in ("hv2", "hv3")
    wait_running_on(cluster, "flushed", client.vms.info("flushed")["node"])
    wait_for_task(client, client.nodes.ready("hv1"))
    assert_no_vm_on_two_hosts(cluster)


def _seen_running(cluster, nodes: tuple[str, ...], window: float) -> dict[str, set[str]]:
    """Every VM seen running on any of `nodes` during `window` seconds, with where."""
    seen: dict[str, set[str]] = {}
    deadline = time.monotonic() + window
    while time.monotonic() < deadline:
        for node in nodes:
            for name, running in cluster.host_domains(node).items():
                if running:
                    seen.setdefault(name, set()).add(node)
        time.sleep(0.1)
    return seen


def test_the_converge_loop_outlives_a_libvirt_outage(cluster):
    """After the outage, a change recorded in ZooKeeper with no coordinator call at all is still carried out:
    only the node's own loop can have done it."""
    client = cluster.client
    client.vms.define(vm_xml("looped"), target="hv3")
    log = _node_log(cluster, "hv3")
    before = log.stat().st_size
    _freeze(cluster, "hv3", True)
    try:
        assert eventually(lambda: "converging failed" in _read_from(log, before),
                          LIBVIRT_TIMEOUT + 4 * KEEPALIVE_INTERVAL), "the loop met the outage"
    finally:
        _freeze(cluster, "hv3", False)
    with cluster_store(cluster.local) as store:
        store.write(schema.vm_key("looped", "state"), "start")
    wait_running_on(cluster, "looped", "hv3", timeout=30)


def _node_log(cluster, node: str) -> Path:
    return cluster.local.state_dir / "nodes" / node / "pvcnoded.log"


def _read_from(path: Path, offset: int) -> str:
    """What was written to `path` after `offset`: a fault's traces, not an earlier test's."""
    with path.open("rb") as stream:
        stream.seek(offset)
        return stream.read().decode(errors="replace")


def test_a_second_daemon_with_a_taken_node_name_refuses_to_start(cluster, tmp_path):
    local = cluster.local
    config = (local.state_dir / "nodes" / "hv2" / "pvcnoded.yaml").read_text()
    second = tmp_path / "pvcnoded.yaml"
    second.write_text(config.replace(str(local.state_dir / "nodes" / "hv2" / "staging"), str(tmp_path / "staging")))
    owner = local.daemon_pid("pvcnoded", "hv2")

    result = subprocess.run([str(os.path.join(os.path.dirname(sys.executable), "pvcnoded")), "--config", str(second)],
                            capture_output=True, text=True, timeout=60)

    assert result.returncode != 0
    assert f"node hv2 is already run by pvcnoded pid {owner} on host" in result.stderr + result.stdout
    assert local.daemon_pid("pvcnoded", "hv2") == owner
    assert cluster.client.nodes.info("hv2")["daemon_state"] == "run", "the refused daemon changed nothing"
    with cluster_store(local) as store:
        assert len(store.zk.get_children(schema.node_owners("hv2"))) == 1, "the refused daemon left no owner"


def test_a_daemon_whose_owner_znode_is_deleted_owns_its_node_again_and_writes_on(cluster):
    """The daemon does not ask ZooKeeper each keepalive whether it still owns its node; a watch on its owner
    znode tells it. Deleted behind its back, the znode is made anew and the keepalives go on as the node."""
    local = cluster.local
    with cluster_store(local) as store:
        [before] = store.zk.get_children(schema.node_owners("hv3"))
        store.zk.delete(f"{schema.node_owners('hv3')}/{before}")

        def owned_again():
            owners = store.zk.get_children(schema.node_owners("hv3"))
            return owners if owners and owners != [before] else None
        again = eventually(owned_again, 4 * KEEPALIVE_INTERVAL, 0.1)
        assert again and len(again) == 1, f"hv3's owners after the deletion: {again}"
        stamp = store.read(schema.node_key("hv3", "keepalive"))["time"]
        assert eventually(lambda: store.read(schema.node_key("hv3", "keepalive"))["time"] > stamp,
                          4 * KEEPALIVE_INTERVAL, 0.1), "no keepalive written as the node since"
    assert cluster.client.nodes.info("hv3")["daemon_state"] == "run"
    assert local.daemon_pid("pvcnoded", "hv3"), "the daemon runs on"


def test_a_daemon_restarted_right_after_a_kill_waits_for_the_old_session_and_starts(cluster):
    local = cluster.local
    local.stop_daemon("pvcnoded", "hv2", kill=True)
    restart_node_daemon(cluster, "hv2")
    assert local.daemon_pid("pvcnoded", "hv2"), "the new daemon runs on"


def test_a_clone_in_a_pid_namespace_of_its_own_cannot_take_the_node_over(cluster, tmp_path):
    """A second pvcnoded with the same node name and config in a PID namespace of its own, as a cloned host
    image or a container runs it (same hostname, its own pid 1, the owner's pid missing from its /proc), waits
    for the owner's session and refuses; the original keeps the node, and nothing of its VMs changes."""
    local, client = cluster.local, cluster.client
    client.vms.define(vm_xml("beside-a-clone"), target="hv2")
    client.vms.start("beside-a-clone", wait=True)
    before = client.vms.info("beside-a-clone")
    directory = local.state_dir / "nodes" / "hv2"
    second = tmp_path / "pvcnoded.yaml"
    second.write_text((directory / "pvcnoded.yaml").read_text()
                      .replace(str(directory / "staging"), str(tmp_path / "staging"))
                      .replace(str(directory / "pvcnoded.log"), str(tmp_path / "clone.log")))
    owner = local.daemon_pid("pvcnoded", "hv2")
    with cluster_store(local) as store:
        owners = store.children(schema.node_owners("hv2"))

    with open(tmp_path / "clone.out", "w") as out:
        clone = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc",
                                  os.path.join(os.path.dirname(sys.executable), "pvcnoded"), "--config", str(second)],
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        exited = clone.wait(timeout=20)
    except subprocess.TimeoutExpired:
        exited = None
    finally:
        if clone.poll() is None:
            os.killpg(clone.pid, signal.SIGKILL)
            clone.wait()
    said = (tmp_path / "clone.out").read_text()

    assert exited not in (None, 0), f"the clone still ran 20 s later, having taken the node: {said[-600:]}"
    assert f"node hv2 is already run by pvcnoded pid {owner} on host" in said and "another PID namespace" in said, \
        said[-600:]
    assert local.daemon_pid("pvcnoded", "hv2") == owner, "the original daemon keeps running"
    with cluster_store(local) as store:
        assert store.children(schema.node_owners("hv2")) == owners, "the original still owns the node"
    assert eventually(lambda: client.nodes.info("hv2")["keepalive_age_s"] < 2 * KEEPALIVE_INTERVAL, 5)
    assert client.nodes.info("hv2")["daemon_state"] == "run"
    assert cluster.host_domains("hv2") == {"beside-a-clone": True}
    after = client.vms.info("beside-a-clone")
    assert (after["node"], after["running"], after["state"]) == (before["node"], before["running"], before["state"])
    assert_no_vm_on_two_hosts(cluster)
