"""A node daemon watches the VMs placed on it (through its node index) and those it is not done with, not every VM.

hv1's pvcnoded runs in this process for these tests (its own config, its own libvirtd), so that what its
collection mirrors can be read; ZooKeeper's ``wchc`` says which znodes its session watches. The other nodes and
the coordinator are the local cluster's own processes.
"""
import threading
import time
from contextlib import contextmanager

import pytest

from pvc import config, node_index, schema
from pvc.cli.localcluster.cluster import KEEPALIVE_INTERVAL
from pvc.node.daemon import NodeDaemon
from pvc.rpc.vm_control import read_desired, write_desired

from helpers import cluster_store, eventually, remove_vm
from vm_support import assert_no_vm_on_two_hosts, remove_all_vms, vm_xml, wait_running_on


@contextmanager
def node_in_process(cluster, name: str = "hv1"):
    """Run `name`'s pvcnoded in this process (its keepalives written by a thread of the test), and the real
    daemon again afterwards."""
    local = cluster.local
    local.stop_daemon("pvcnoded", name)
    settings = config.load(local.state_dir / "nodes" / name / "pvcnoded.yaml", config.NODED_SETTINGS,
                           {"log_file": None})
    node = NodeDaemon(settings)
    stopping = threading.Event()

    def keepalives() -> None:
        while not stopping.wait(KEEPALIVE_INTERVAL):
            try:
                node.write_keepalive()
            except Exception:
                pass
    node.start()
    beat = threading.Thread(target=keepalives, daemon=True)
    beat.start()
    try:
        yield node
    finally:
        stopping.set()
        beat.join()
        node.stop()
        local.start_node_daemon(name)
        local.wait_ready(30)


def watched_vms(cluster, node: NodeDaemon) -> set[str]:
    """The VMs whose znodes the node daemon's ZooKeeper session watches now, as the server says (``wchc``)."""
    session = f"0x{node.store.zk.client_id[0]:x}"
    answer = cluster.local.zookeeper(cluster.local.zookeeper_names[0]).ask("wchc")
    watched, current = set(), None
    for line in answer.splitlines():
        if line.startswith("0x"):
            current = line.strip()
        elif current == session and f"{schema.VMS}/" in line:
            watched.add(line.strip().split(f"{schema.VMS}/", 1)[1].split("/", 1)[0])
    return watched


def placed_on(cluster, node: str) -> set[str]:
    return {vm["name"] for vm in cluster.client.vms.list() if vm["node"] == node}


@pytest.fixture(autouse=True)
def no_vms_left(cluster):
    yield
    remove_all_vms(cluster)


def test_the_index_is_complete_on_a_new_cluster_and_names_each_vm_s_node(cluster):
    client = cluster.client
    for index, node in enumerate(("hv1", "hv2", "hv2")):
        client.vms.define(vm_xml(f"indexed{index}"), target=node)
    client.vms.migrate("indexed2", target="hv3")
    with cluster_store(cluster.local) as store:
        assert node_index.complete(store)
        entries = {(node, vm) for node in store.children(schema.NODE_VMS)
                   for vm in store.children(schema.node_vms(node)) if vm.startswith("indexed")}
    assert entries == {("hv1", "indexed0"), ("hv2", "indexed1"), ("hv3", "indexed2")}
    client.vms.remove("indexed2", wait=True)
    with cluster_store(cluster.local) as store:
        assert store.zk.exists(schema.node_vm("hv3", "indexed2")) is None


def test_a_node_watches_exactly_the_vms_placed_on_it(cluster):
    client = cluster.client
    for index in range(3):
        client.vms.define(vm_xml(f"own{index}"), target="hv1")
        client.vms.define(vm_xml(f"other{index}"), target="hv2")
        client.vms.start(f"own{index}")
        client.vms.start(f"other{index}")
    for index in range(3):
        wait_running_on(cluster, f"own{index}", "hv1")
        wait_running_on(cluster, f"other{index}", "hv2")
    with node_in_process(cluster) as node:
        own = placed_on(cluster, "hv1")
        assert own >= {"own0", "own1", "own2"}
        assert set(node.vms.names()) == own
        assert watched_vms(cluster, node) == own
        assert all(cluster.host_domains("hv1").get(f"own{index}") for index in range(3))


def test_a_vm_placed_on_a_running_node_is_picked_up_and_started_without_a_call(cluster):
    """The placement is written as a coordinator writes it, but no coordinator asks the node: its index alone
    tells it."""
    client = cluster.client
    client.vms.define(vm_xml("arriving"), target="hv2")
    with node_in_process(cluster) as node, cluster_store(cluster.local) as store:
        assert "arriving" not in node.vms.names()
        write_desired(store, "arriving", read_desired(store, "arriving"), state="start",
                      placement={"node": "hv1", "last_node": None})
        assert eventually(lambda: cluster.host_domains("hv1").get("arriving"), 5 * KEEPALIVE_INTERVAL)
        assert "arriving" in node.vms.names()
        assert eventually(lambda: client.vms.info("arriving")["running"] is True, 5 * KEEPALIVE_INTERVAL)
        assert watched_vms(cluster, node) == placed_on(cluster, "hv1")


def test_a_moved_vm_is_let_go_by_its_source_only_once_the_move_settled(cluster):
    client = cluster.client
    client.vms.define(vm_xml("leaving"), target="hv1")
    client.vms.start("leaving", wait=True)
    samples = []
    with node_in_process(cluster) as node, cluster_store(cluster.local) as store:
        stop = threading.Event()

        def observe() -> None:
            while not stop.is_set():
                watched = "leaving" in node.vms.names()
                indexed = store.zk.exists(schema.node_vm("hv1", "leaving")) is not None
                status = store.read(schema.vm_key("leaving", "status")) or {}
                on_source = "leaving" in cluster.host_domains("hv1")
                samples.append((watched, indexed, status, on_source))
                time.sleep(0.01)
        observer = threading.Thread(target=observe)
        observer.start()
        try:
            client.vms.move("leaving", target="hv3", wait=True)
            assert eventually(lambda: "leaving" not in node.vms.names(), 5 * KEEPALIVE_INTERVAL)
        finally:
            stop.set()
            observer.join()
    wait_running_on(cluster, "leaving", "hv3")
    assert_no_vm_on_two_hosts(cluster)
    moving = [sample for sample in samples if not sample[1]]
    assert any(watched for watched, *_ in moving), "the source never watched the VM once its index lost it"
    for watched, _indexed, status, on_source in moving:
        if not watched:
            assert not on_source, "let go while its domain was still on the source"
            assert status.get("node") != "hv1" or status.get("running") is False, \
                f"let go while its status said the source held it: {status}"


def test_a_vm_moved_away_while_its_source_was_down_is_still_stopped_there(cluster):
    """The index stops naming the VM while hv1's daemon is down; its domain still runs there, so hv1's first
    pass watches and stops it, and the target starts it only then."""
    client = cluster.client
    client.vms.define(vm_xml("stranded"), target="hv1")
    client.vms.start("stranded", wait=True)
    cluster.local.stop_daemon("pvcnoded", "hv1")
    try:
        with cluster_store(cluster.local) as store:
            write_desired(store, "stranded", read_desired(store, "stranded"), state="migrate",
                          placement={"node": "hv2", "last_node": "hv1"})
            assert store.zk.exists(schema.node_vm("hv1", "stranded")) is None
        time.sleep(3 * KEEPALIVE_INTERVAL)
        assert cluster.host_domains("hv1").get("stranded") and not cluster.host_domains("hv2").get("stranded"), \
            "the target must not start a VM its old node may still run"
    finally:
        cluster.local.start_node_daemon("hv1")
        cluster.local.wait_ready(30)
    wait_running_on(cluster, "stranded", "hv2", timeout=10 * KEEPALIVE_INTERVAL)
    assert "stranded" not in cluster.host_domains("hv1")
    assert_no_vm_on_two_hosts(cluster)


def test_a_vm_placed_elsewhere_while_its_node_was_down_and_emptied_is_reported_off_by_it(cluster):
    """Its status still says it runs on hv1, its host no longer has it (powered off meanwhile) and hv1's index no
    longer names it: hv1 must still say it is off when it comes back, or its new node never starts it."""
    client = cluster.client
    client.vms.define(vm_xml("forgotten"), target="hv1")
    client.vms.start("forgotten", wait=True)
    cluster.local.stop_daemon("pvcnoded", "hv1")
    try:
        remove_vm(cluster.local.host("hv1").uri, "forgotten")
        with cluster_store(cluster.local) as store:
            write_desired(store, "forgotten", read_desired(store, "forgotten"), state="start",
                          placement={"node": "hv2", "last_node": None})
        time.sleep(3 * KEEPALIVE_INTERVAL)
        assert not cluster.host_domains("hv2").get("forgotten"), "started while hv1 may still run it"
    finally:
        cluster.local.start_node_daemon("hv1")
        cluster.local.wait_ready(30)
    wait_running_on(cluster, "forgotten", "hv2", timeout=10 * KEEPALIVE_INTERVAL)
    assert_no_vm_on_two_hosts(cluster)


def test_a_node_watches_every_vm_while_the_cluster_s_index_is_not_built(cluster):
    client = cluster.client
    client.vms.define(vm_xml("mine"), target="hv1")
    client.vms.define(vm_xml("theirs"), target="hv2")
    with cluster_store(cluster.local) as store:
        store.zk.set(schema.NODE_VMS, schema.encode({"complete": False}))
        try:
            with node_in_process(cluster) as node:
                store.zk.set(schema.NODE_VMS, schema.encode({"complete": True}))  # as its daemon started: not
                assert {"mine", "theirs"} <= set(node.vms.names())
                assert {"mine", "theirs"} <= watched_vms(cluster, node)
        finally:
            store.zk.set(schema.NODE_VMS, schema.encode({"complete": True}))
