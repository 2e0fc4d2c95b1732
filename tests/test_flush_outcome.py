"""A flush says what happened: one whose move failed ends `failed`, leaves the node `flushing` (not `flushed`),
names the VM still there and why, and `--wait` exits non-zero; concurrent flushes of one node make one task.

The failed move is real: the target's libvirtd already holds a domain (defined behind PVC's back) with the
VM's UUID, so it refuses to define the VM and the VM returns to its node.
"""
import os
import signal
import threading
import time

import libvirt
import pytest

import pvc
from pvc import schema
from pvc.errors import Conflict
from pvc.rpc.tasks import PROGRESS_SAVE_S

from helpers import cluster_store, eventually
from vm_support import (assert_no_vm_on_two_hosts, new_uuid, pvc as pvc_cli, every_node_ready, remove_all_vms,
                        running_hosts, vm_xml, wait_for_task, wait_gone, wait_running_on)


@pytest.fixture(autouse=True)
def nodes_ready_and_empty_afterwards(cluster):
    yield
    every_node_ready(cluster)
    remove_all_vms(cluster)


@pytest.fixture
def squatter(cluster):
    """Define a domain with a given UUID directly in a host's libvirtd (`squatter(node, uuid)`), and undefine
    it again (`squatter.remove(node, uuid)`, or at the end). It goes by its own name: the VM with its UUID
    may run on that host by then."""
    made = set()

    def define(node: str, uuid: str) -> None:
        connection = libvirt.open(cluster.local.host(node).uri)
        try:
            connection.defineXML(vm_xml(squatter_name(uuid), uuid=uuid))
        finally:
            connection.close()
        made.add((node, uuid))

    def remove(node: str, uuid: str) -> None:
        connection = libvirt.open(cluster.local.host(node).uri)
        try:
            connection.lookupByName(squatter_name(uuid)).undefine()
        finally:
            connection.close()
        made.discard((node, uuid))
    define.remove = remove
    yield define
    for node, uuid in list(made):
        remove(node, uuid)


def squatter_name(uuid: str) -> str:
    return f"squatter-{uuid[:8]}"


def start_on(cluster, node: str, name: str, **options) -> None:
    cluster.client.vms.define(vm_xml(name, uuid=options.pop("uuid", None)), target=node, **options)
    cluster.client.vms.start(name, wait=True)
    wait_running_on(cluster, name, node)


def test_a_flush_whose_move_fails_ends_failed_and_names_the_vm_still_on_the_node(cluster, squatter):
    anchored_uuid = new_uuid()
    start_on(cluster, "hv1", "anchored", uuid=anchored_uuid, node_limit=["hv1", "hv2"])
    start_on(cluster, "hv1", "free")
    start_on(cluster, "hv1", "homebody", node_limit=["hv1"])
    squatter("hv2", anchored_uuid)

    flushed = pvc_cli(cluster, "node", "flush", "hv1", "--wait")

    assert flushed.exit_code != 0, flushed.output
    assert "flush of hv1: failed; moved 1 VM(s)" in flushed.stdout, flushed.output
    assert "shut down (no valid target): homebody" in flushed.stdout, "a VM with no valid target is handled"
    assert "still on hv1:\n  anchored: " in flushed.stdout, flushed.output
    wait_running_on(cluster, "anchored", "hv1")
    assert running_hosts(cluster).get("free") in (["hv2"], ["hv3"]), "the movable VM moved"
    assert "homebody" not in running_hosts(cluster)
    assert_no_vm_on_two_hosts(cluster)

    node = cluster.client.nodes.info("hv1")
    assert node["domain_state"] == "flushing", "never flushed with a VM still on it"
    assert len(node["not_flushed"]) == 1 and node["not_flushed"][0].startswith("anchored: "), node
    task = [task for task in cluster.client.nodes.tasks() if task["node"] == "hv1"][-1]
    assert task["state"] == "failed" and [entry["name"] for entry in task["not_moved"]] == ["anchored"]
    shown = pvc_cli(cluster, "node", "info", "hv1")
    assert "Domain state:       flushing" in shown.stdout
    assert "Not flushed:        anchored: " in shown.stdout, shown.output

    squatter.remove("hv2", anchored_uuid)
    again = pvc_cli(cluster, "node", "flush", "hv1", "--wait")

    assert again.exit_code == 0, again.output
    assert "flush of hv1: done; moved 1 VM(s)" in again.stdout, again.output
    wait_running_on(cluster, "anchored", "hv2")
    node = cluster.client.nodes.info("hv1")
    assert node["domain_state"] == "flushed" and node["not_flushed"] == []


def concurrently(cluster, calls: list[tuple[str, str]]) -> list:
    """Make each (method, node) call from a client of its own, all at the same moment; each call's result or
    error, in order."""
    results: list = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def call(index: int) -> None:
        method, node = calls[index]
        client = pvc.connect(cluster.local.uris, cluster.local.state["api_key"])
        try:
            client.nodes.list()
            barrier.wait()
            results[index] = getattr(client.nodes, method)(node)
        except Exception as error:
            results[index] = error
        finally:
            client.close()
    threads = [threading.Thread(target=call, args=(index,)) for index in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def tasks_of(cluster, node: str) -> list[dict]:
    return [task for task in cluster.client.nodes.tasks() if task["node"] == node]


def test_concurrent_flushes_of_one_node_make_one_task(cluster):
    for _round in range(3):
        before = {task["id"] for task in tasks_of(cluster, "hv3")}

        results = concurrently(cluster, [("flush", "hv3")] * 8)

        assert not [result for result in results if isinstance(result, Exception)], results
        made = [task for task in tasks_of(cluster, "hv3") if task["id"] not in before]
        assert len(made) == 1, f"one flush task, not {len(made)}: {[task['id'] for task in made]}"
        assert {result["id"] for result in results} == {made[0]["id"]}, "every caller is given that task"
        assert wait_for_task(cluster.client, made[0])["state"] == "done"
        wait_for_task(cluster.client, cluster.client.nodes.ready("hv3"))


def test_a_flush_and_a_ready_at_once_never_run_together_and_the_other_kind_is_refused_clearly(cluster):
    """Whichever call lands first makes the task; the other kind is refused while it runs. A task done before
    the last call arrives (a ready of a ready node can end within the 0.13 s the calls took) lets that call make
    a task of its own afterwards: never two at once. The VM on hv3 gives a flush first something to move."""
    start_on(cluster, "hv3", "busy")
    before = {task["id"] for task in tasks_of(cluster, "hv3")}

    calls = [("flush", "hv3"), ("ready", "hv3")] * 4
    results = concurrently(cluster, calls)

    made = [task for task in tasks_of(cluster, "hv3") if task["id"] not in before]
    assert 1 <= len(made) <= 2, [task["id"] for task in made]
    for task in made:
        assert eventually(lambda: cluster.client.nodes.task(task["id"])["state"] == "done", 30, 0.2), task
    made = [cluster.client.nodes.task(task["id"]) for task in made]
    for earlier, later in zip(made, made[1:]):
        assert later["kind"] != earlier["kind"] and later["created"] >= earlier["finished"], (earlier, later)
    refused = [result for result in results if isinstance(result, Exception)]
    assert len(refused) >= 8 - 4 * len(made) and all(
        isinstance(error, Conflict) and "in progress" in str(error) for error in refused), refused
    given = [(method, result) for (method, _node), result in zip(calls, results) if not isinstance(result, Exception)]
    assert {result["id"] for _method, result in given} == {task["id"] for task in made}
    assert all(result["kind"] == method for method, result in given), given


def test_a_vm_removed_while_its_flush_waits_for_it_is_no_failure_of_the_flush(cluster):
    """The flush records the move, then waits for the new node, whose libvirtd is frozen (so the start hangs
    there) until an administrator has removed the VM: the flush ends done, naming the VM as changed by a
    command, and the start that completes at the thaw is undone by the node. Before, the wait's `no VM named`
    failed the task (and a recovery that met it was tried again: QEMU fault bench)."""
    start_on(cluster, "hv1", "leaving", node_limit=["hv1", "hv2"])
    libvirtd = cluster.local.host("hv2").pid
    os.kill(libvirtd, signal.SIGSTOP)
    try:
        task = cluster.client.nodes.flush("hv1")
        assert eventually(lambda: "leaving" in cluster.client.nodes.task(task["id"])["moved"], 5, 0.05)
        removed = pvc_cli(cluster, "vm", "remove", "leaving", "--force", "--yes")
        assert removed.exit_code == 0, removed.output
    finally:
        os.kill(libvirtd, signal.SIGCONT)

    done = wait_for_task(cluster.client, task)
    assert (done["state"], done["errors"], done.get("changed_by_command")) == ("done", [], ["leaving"]), done
    wait_gone(cluster, "leaving")
    assert "leaving" not in running_hosts(cluster)


def test_a_flush_of_many_vms_saves_its_progress_a_few_times_a_second_and_its_count_in_full(cluster):
    """The task record is saved for its progress at most every `PROGRESS_SAVE_S`, not once per VM moved (a
    recovery of 500 wrote its growing record 500 times); the last count is still saved, and the record ends
    with every VM counted."""
    names = [f"many{index:02d}" for index in range(24)]
    for name in names:
        cluster.client.vms.define(vm_xml(name), target="hv1")
    for name in names:
        cluster.client.vms.start(name)
    assert eventually(lambda: all(vm["running"] for vm in cluster.client.vms.list() if vm["name"] in names), 30)

    began = time.monotonic()
    done = wait_for_task(cluster.client, cluster.client.nodes.flush("hv1"), timeout=60)
    took = time.monotonic() - began
    assert (done["state"], done["done"], sorted(done["moved"])) == ("done", len(names), names), done
    with cluster_store(cluster.local) as store:
        saves = store.zk.get(schema.task(done["id"]))[1].version
    assert saves <= 4 + took / PROGRESS_SAVE_S, f"{saves} saves of the task record in {took:.1f} s"
    assert saves < len(names), f"{saves} saves for {len(names)} VMs: one per VM"
