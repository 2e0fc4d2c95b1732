"""A flush moves VMs several at a time, never more than `flush_parallelism`: proved with a delay injected where
the coordinator calls node agents, in a coordinator running inside the test process."""
import threading
import time

import pytest

import pvc
from pvc import config
from pvc.rpc.agents import NodeAgents
from pvc.rpc.coordinator import Coordinator

from helpers import eventually
from vm_support import assert_no_vm_on_two_hosts, running_hosts, vm_xml, wait_for_task

DELAY_S = 0.5
VM_COUNT = 20


class InFlight:
    """Counts node-agent calls under way; each is held up by `DELAY_S` first."""

    def __init__(self, original):
        self._original = original
        self._lock = threading.Lock()
        self.now = self.most = self.calls = 0

    def call(self, agents, node, agent_uri, method, *args, **kwargs):
        with self._lock:
            self.now += 1
            self.calls += 1
            self.most = max(self.most, self.now)
        try:
            time.sleep(DELAY_S)
            return self._original(agents, node, agent_uri, method, *args, **kwargs)
        finally:
            with self._lock:
                self.now -= 1


@pytest.fixture
def coordinator_in_process(fresh_cluster):
    """The cluster's coordinator, stopped and started again inside this process with the same settings."""
    local = fresh_cluster.local
    name = local.coordinator_names[0]
    settings = config.load(local.state_dir / "coordinators" / name / "pvcapid.yaml", config.APID_SETTINGS)
    local.stop_daemon("pvcapid", name)
    coordinator = Coordinator(settings)
    coordinator.start()
    client = pvc.connect(local.uris, local.state["api_key"])
    assert eventually(lambda: client.cluster.status()["leader"] == name, 10, 0.1), "it leads the cluster"
    try:
        yield coordinator, client
    finally:
        client.close()
        coordinator._shutdown()


def test_a_flush_of_20_vms_runs_several_moves_at_once_within_the_bound(fresh_cluster, coordinator_in_process,
                                                                        mocker):
    coordinator, client = coordinator_in_process
    names = [f"busy{index:02d}" for index in range(VM_COUNT)]
    for name in names:
        client.vms.define(vm_xml(name), target="hv1")
        client.vms.start(name)
    assert eventually(lambda: all(running_hosts(fresh_cluster).get(name) == ["hv1"] for name in names), 20, 0.2)
    in_flight = InFlight(NodeAgents.call)
    mocker.patch.object(NodeAgents, "call", lambda agents, *args, **kwargs: in_flight.call(agents, *args, **kwargs))

    task = wait_for_task(client, client.nodes.flush("hv1"), timeout=60)

    bound = coordinator.settings["flush_parallelism"]
    print(f"\nflush of {VM_COUNT} VMs with {DELAY_S} s per agent call: {in_flight.calls} calls, at most "
          f"{in_flight.most} in flight (bound {bound})")
    assert task["moved"] == names and task["errors"] == []
    assert in_flight.calls >= VM_COUNT, "every move went through the node agents"
    assert 1 < in_flight.most <= bound, "moves ran several at a time, never more than the bound"
    where = assert_no_vm_on_two_hosts(fresh_cluster)
    assert sorted(where) == names and not any("hv1" in nodes for nodes in where.values())
