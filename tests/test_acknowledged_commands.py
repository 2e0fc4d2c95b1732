"""A command a client was told had succeeded is never undone by the leader's long tasks (flush, ready,
recovery): they decide each VM from what they read under its lock, and a VM changed by a command meanwhile is
reported as such, not moved and not counted as failed."""
import threading
import time

import pytest

import pvc

from helpers import eventually
from vm_support import assert_no_vm_on_two_hosts, every_daemon_running_and_no_vms_left, every_node_ready, \
    running_hosts, vm_xml, wait_for_task
from vm_support import pvc as pvc_cli

VM_COUNT = 30
STOPPED = 12


@pytest.fixture(autouse=True)
def no_vms_left(cluster):
    yield
    every_node_ready(cluster)
    every_daemon_running_and_no_vms_left(cluster)


def test_a_stop_answered_during_a_flush_holds(cluster):
    client, local = cluster.client, cluster.local
    names = [f"ack{index:02d}" for index in range(VM_COUNT)]
    for name in names:
        client.vms.define(vm_xml(name, memory_mib=64), target="hv1")
        client.vms.start(name)
    assert eventually(lambda: all(running_hosts(cluster).get(name) == ["hv1"] for name in names), 30, 0.2), \
        running_hosts(cluster)

    # The flush records its moves in name order; the client stops the last VMs from the other end, so that
    # some stops land after the flush has looked at the VMs and before it has recorded their move.
    to_stop = list(reversed(names))[:STOPPED]
    answered: list[str] = []
    task = client.nodes.flush("hv1")

    def stop_while_flushing():
        stopper = pvc.connect(local.uris, local.state["api_key"])
        try:
            while stopper.nodes.task(task["id"])["state"] == "pending":
                time.sleep(0.01)
            for name in to_stop:
                stopper.vms.stop(name)
                answered.append(name)
        finally:
            stopper.close()

    stopping = threading.Thread(target=stop_while_flushing)
    stopping.start()
    stopping.join(60)
    finished = wait_for_task(client, task, timeout=120)

    assert answered == to_stop, "every stop was answered"

    def stops_hold():
        where = assert_no_vm_on_two_hosts(cluster)
        return all(client.vms.info(name)["state"] == "stop" and name not in where for name in answered)
    assert eventually(stops_hold, 30, 0.2), \
        {name: (client.vms.info(name)["state"], running_hosts(cluster).get(name)) for name in answered}
    time.sleep(2)
    assert stops_hold(), "a stopped VM started again"
    changed = finished.get("changed_by_command") or []
    assert set(changed) <= set(answered) and not set(changed) & set(finished["moved"]), finished
    assert finished["state"] == "done" and not finished["errors"], finished
    if changed:
        info = pvc_cli(cluster, "node", "info", "hv1").output
        assert "Changed by command" in info and ", ".join(changed) in info, info
        assert f"{len(changed)} changed by a command meanwhile" in pvc_cli(cluster, "cluster", "task", "list").output
    print(f"\n{len(changed)} of {STOPPED} stopped VMs were changed by the command during the flush: {changed}")
