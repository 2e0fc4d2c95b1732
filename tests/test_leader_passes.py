"""The leader's node-request pass visits only the VMs whose records changed, and an audit catches what that misses.

A real two-node cluster (test-driver hosts) whose coordinator runs in the test process with an audit interval of an
hour, so that past the full pass it makes on taking office, only the change path can record a node's request
promptly. 200 quiet VM records (placed on a node no daemon serves) show which VMs a pass visits. The request is
a real one: a VM's restart, which its node carries out and then asks the leader to record ``start`` for.
"""
import threading
import time
import types
import uuid

import libvirt
import pytest

from pvc import schema
from pvc.rpc import node_requests

from conftest import started_cluster
from coordinator_support import coordinator_in_process
from helpers import cluster_store, eventually
from vm_support import vm_xml, wait_running_on

QUIET = 200
VM = "asking"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    yield from started_cluster(tmp_path_factory.mktemp("passes"), nodes=2, coordinators=1)


@pytest.fixture(scope="module")
def leading(cluster):
    with cluster_store(cluster.local) as store:
        for first in range(0, QUIET, 100):
            transaction = store.transaction()
            for index in range(first, first + 100):
                name = f"quiet{index:03d}"
                transaction.create(schema.vm(name), {"name": name, "uuid": str(uuid.uuid4()), "memory_mib": 512,
                                                     "vcpus": 1, "xml": vm_xml(name), "generation": 1}) \
                    .create(schema.vm_key(name, "state"), "start") \
                    .create(schema.vm_key(name, "placement"), {"node": "elsewhere", "last_node": None})
            transaction.commit()
    with coordinator_in_process(cluster.local, leader_audit_interval=3600) as (coordinator, client):
        client.vms.define(vm_xml(VM), target="hv1")
        client.vms.start(VM, wait=True)
        yield coordinator, client


def _passes(mocker, coordinator):
    """A spy on the leader's node-request pass, returned once it has run since (the audit of taking office is
    long done by then: the coordinator led before this)."""
    handled = mocker.spy(coordinator.requests, "handle")
    assert eventually(lambda: handled.call_count >= 1, 5)
    return handled


def _state(client) -> str:
    return client.vms.info(VM)["state"]


def _request_seen(coordinator) -> bool:
    """Whether the leader's cache shows the node's request to record ``start`` for the restart recorded last
    (its restart is done), not one an earlier restart left until the node's next pass."""
    raw, zxids = coordinator.cache.vms.get_with_zxids(VM)
    request = ((raw or {}).get("status") or {}).get("request") or {}
    return request.get("kind") == "settle" and request.get("state_zxid") == zxids.get("state")


def test_a_node_request_is_recorded_by_the_next_pass_over_the_changed_vms_only(cluster, leading, mocker):
    coordinator, client = leading
    _passes(mocker, coordinator)
    visits = mocker.spy(coordinator.requests, "_visit")

    client.vms.restart(VM)

    assert eventually(lambda: _state(client) == "start", 10), client.vms.info(VM)
    assert {call.args[0] for call in visits.call_args_list} == {VM}, "no pass visited a VM that did not change"
    wait_running_on(cluster, VM, "hv1")


def test_a_request_that_arrives_during_a_pass_is_recorded_by_the_next(cluster, leading, mocker):
    coordinator, client = leading
    _passes(mocker, coordinator)
    paused, resume = threading.Event(), threading.Event()
    visit = coordinator.requests._visit

    def held(name, leader_node):
        if name == "quiet000":
            paused.set()
            assert resume.wait(20)
        return visit(name, leader_node)
    visits = mocker.patch.object(coordinator.requests, "_visit", side_effect=held)
    with cluster_store(cluster.local) as store:
        store.write(schema.vm_key("quiet000", "status"), {"node": "elsewhere", "running": False, "time": time.time()})
    assert paused.wait(10), "a pass visits the VM whose record changed"
    try:
        client.vms.restart(VM)
        assert eventually(lambda: _request_seen(coordinator), 10), "the node asked while the pass was held"
    finally:
        resume.set()

    assert eventually(lambda: _state(client) == "start", 10), client.vms.info(VM)
    assert {call.args[0] for call in visits.call_args_list} == {"quiet000", VM}
    wait_running_on(cluster, VM, "hv1")


def _domain_id(cluster) -> int:
    """The VM's domain ID in hv1's own libvirtd: each start gives a new one."""
    connection = libvirt.open(cluster.local.host("hv1").uri)
    try:
        return connection.lookupByName(VM).ID()
    finally:
        connection.close()


class ChangesMissing:
    """The VMs' watched collection as the pass sees it, but with `hidden` left out of the change log: the pass's
    view of a change whose watch it missed."""

    def __init__(self, collection, hidden: str):
        self._collection = collection
        self._hidden = hidden

    def changes(self, since: int):
        sequence, changed = self._collection.changes(since)
        return sequence, None if changed is None else [name for name in changed if name != self._hidden]

    def __getattr__(self, name: str):
        return getattr(self._collection, name)


def test_a_request_the_change_path_missed_is_recorded_by_the_audit(cluster, leading, mocker):
    coordinator, client = leading
    mocker.patch.object(coordinator.requests, "_vms", ChangesMissing(coordinator.cache.vms, VM))
    handled = _passes(mocker, coordinator)
    visits = mocker.spy(coordinator.requests, "_visit")

    client.vms.restart(VM)
    assert eventually(lambda: _request_seen(coordinator), 10), "the node asked"
    restarted = _domain_id(cluster)
    passes = handled.call_count
    assert eventually(lambda: handled.call_count >= passes + 3, 10)
    assert _state(client) == "restart", "the change path missed the request"
    assert visits.call_count == 0
    assert _domain_id(cluster) == restarted and _request_seen(coordinator), \
        "restarted once: the node waits for the leader, still asking"

    now = time.monotonic
    mocker.patch.object(node_requests, "time", types.SimpleNamespace(monotonic=lambda: now() + 3600))

    assert eventually(lambda: _state(client) == "start", 10), client.vms.info(VM)
    assert visits.call_count >= QUIET + 1 and VM in {call.args[0] for call in visits.call_args_list}, \
        "an audit visited every VM"
    wait_running_on(cluster, VM, "hv1")
