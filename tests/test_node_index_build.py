"""Building the node index of a cluster made before it: once, from the placements, safe against placement writes
made at the same time (on a real ZooKeeper, each test in its own chroot)."""
import random
import threading

import pytest

from pvc import node_index, schema
from pvc.rpc.vm_control import Superseded, read_desired, write_desired
from pvc.store import Store

from conftest import ZK_PASSWORD, ZK_USER

NODES = ("hv1", "hv2", "hv3")


def legacy_cluster(store: Store, vms: int) -> None:
    """VMs recorded as a PVC without the index records them: placements, no entries, no index root."""
    store.zk.delete(schema.NODE_VMS, recursive=True)
    for index in range(vms):
        name = f"old{index}"
        store.transaction() \
            .create(schema.vm(name), {"name": name}) \
            .create(schema.vm_key(name, "state"), "start") \
            .create(schema.vm_key(name, "placement"), {"node": NODES[index % 3], "last_node": None}) \
            .commit()


def entries(store: Store) -> set[tuple[str, str]]:
    return {(node, vm) for node in store.children(schema.NODE_VMS) for vm in store.children(schema.node_vms(node))}


def placements(store: Store) -> set[tuple[str, str]]:
    return {(store.read(schema.vm_key(vm, "placement"))["node"], vm) for vm in store.children(schema.VMS)}


def test_a_new_cluster_s_index_is_complete_and_an_old_one_s_is_not_until_built(store, zookeeper_hosts):
    assert node_index.complete(store)
    legacy_cluster(store, 6)
    restarted = Store(zookeeper_hosts, ZK_USER, ZK_PASSWORD, session_timeout=4)
    restarted.start(connect_timeout=10)
    try:
        assert not node_index.complete(restarted), "a cluster with VMs and no index must not be taken as indexed"
        assert node_index.build(restarted) == 6
        assert node_index.complete(restarted)
        assert entries(restarted) == placements(restarted)
        assert node_index.build(restarted) == 0
    finally:
        restarted.stop()


def test_a_stray_entry_is_removed_and_a_missing_one_made(store):
    legacy_cluster(store, 3)
    store.zk.ensure_path(schema.node_vms("hv3"))
    store.zk.create(schema.node_vm("hv3", "old0"))  # old0 is on hv1
    node_index.build(store)
    assert entries(store) == placements(store) == {("hv1", "old0"), ("hv2", "old1"), ("hv3", "old2")}


def test_moves_made_while_the_index_is_built_by_two_coordinators_leave_it_exact(store, zookeeper_hosts):
    legacy_cluster(store, 60)
    stores = [Store(zookeeper_hosts, ZK_USER, ZK_PASSWORD, session_timeout=4) for _ in range(3)]
    for other in stores:
        other.start(connect_timeout=10)
    superseded = []

    def mover(writer: Store, seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(60):
            name = f"old{rng.randrange(60)}"
            current = read_desired(writer, name)
            try:
                write_desired(writer, name, current, placement={"node": rng.choice(NODES), "last_node": None})
            except Superseded:
                superseded.append(name)
    try:
        threads = [threading.Thread(target=node_index.build, args=(stores[0],)),
                   threading.Thread(target=node_index.build, args=(stores[1],)),
                   threading.Thread(target=mover, args=(stores[2], 1)),
                   threading.Thread(target=mover, args=(store, 2))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert node_index.complete(store)
        assert entries(store) == placements(store)
    finally:
        for other in stores:
            other.stop()


def test_a_placement_write_read_before_the_build_committed_loses_to_it(store, mocker):
    """The build commits between a placement writer's reads (its placement, then its index entries) and its
    commit: the writer's transaction must fail, else the entry the build made on the old node would stay."""
    legacy_cluster(store, 1)
    place = node_index.place

    def build_meanwhile(*args) -> None:
        place(*args)
        node_index.build(store)
    mocker.patch.object(node_index, "place", side_effect=build_meanwhile)
    current = read_desired(store, "old0")
    with pytest.raises(Superseded):
        write_desired(store, "old0", current, placement={"node": "hv2", "last_node": "hv1"})
    mocker.stopall()
    write_desired(store, "old0", read_desired(store, "old0"), placement={"node": "hv2", "last_node": "hv1"})
    assert entries(store) == placements(store) == {("hv2", "old0")}
