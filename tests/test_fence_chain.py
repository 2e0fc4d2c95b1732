"""The leader's fencing chain and recovery task, run in this process over a real ZooKeeper, against a real
ipmi_sim whose chassis is a simulated host: what each level proved decides, on evidence only, whether a dead
node counts as fenced; a failed recovery is tried again later; a recovery re-checks its guards when it runs.

The storage level here is a stand-in I/O policy registered as a third party's would be: it proves isolation
at once, so that what is judged is the chain's rule, not Ceph (tests/test_fencing_policies.py covers that)."""
from __future__ import annotations

import dataclasses
import socket
import time
from types import SimpleNamespace

import pytest

import pvc
from pvc import plugin_manager, schema
from pvc.cache import OWN_VALUE, ClusterCache
from pvc.cli.cluster import _task_row
from pvc.cli.localcluster.processes import free_port
from pvc.cli.node import _info_table
from pvc.errors import Conflict, InvalidInput
from pvc.hookspecs import FenceResult
from pvc.rpc import tasks
from pvc.rpc.areas.cluster import ClusterArea
from pvc.rpc.areas.nodes import NodesArea
from pvc.rpc.context import CoordinatorContext
from pvc.rpc import recovery
from pvc.rpc.recovery import RecoveryExecution, record_recovery
from pvc.rpc.vm_control import VMControl

from helpers import eventually
from test_fencing_policies import powered_host  # noqa: F401 (a fixture)

SECRET = "fence-chain-test-secret"


class StandInStorageFence:
    description = "stands for a storage fence that proved the node isolated"
    kind = "io"

    def fence(self, node, options, deadline) -> FenceResult:
        return FenceResult.isolated(f"{node['name']} isolated from storage (stand-in)")


class CountingPowerFence:
    """A power level that records each call and never reaches its device."""

    description = "counts its calls; its device never answers"
    kind = "power"

    def __init__(self):
        self.calls: list[str] = []

    def fence(self, node, options, deadline) -> FenceResult:
        self.calls.append(node["name"])
        return FenceResult.failed("no answer from the power switch", device_answered=False)


class StandInPolicies:
    def __init__(self):
        self.counting = CountingPowerFence()

    @pvc.hookimpl
    def pvc_fencing_policies(self):
        return {"stand-in-io": StandInStorageFence(), "counting-power": self.counting}


@pytest.fixture
def leader(store):
    return store.zk.create(f"{schema.ELECTION}/contender-", b"", ephemeral=True, sequence=True)


@pytest.fixture
def policies():
    return StandInPolicies()


@pytest.fixture
def context(store, policies):
    cache = ClusterCache(store)
    cache.start()
    return CoordinatorContext("test-leader", {"cluster_secret": SECRET, "recovery_starts_per_node": 16}, store,
                              cache, plugin_manager.load(extra=[policies]), agents=None, leadership=None)


def node(context, name: str, daemon_state: str, bmc: dict | None = None) -> None:
    store = context.store
    store.write(schema.node(name), {"keepalive_interval": 1, "bmc": bmc or {}})
    store.write(schema.node_key(name, "keepalive"), {"time": time.time()})
    store.write(schema.node_key(name, "domain_state"), "ready")
    store.write(schema.node_key(name, "daemon_state"), daemon_state)
    assert eventually(lambda: (context.cache.nodes.get(name) or {}).get("daemon_state") == daemon_state)


def others_running(context) -> None:
    for name in ("hv2", "hv3"):
        node(context, name, "run")


def configure(context, **settings) -> None:
    store = context.store
    store.write(schema.CONFIG, {**store.read(schema.CONFIG), **settings})
    assert eventually(lambda: all(context.cache.config.get().get(key) == value for key, value in settings.items()))


def bmc_of(bmc, **changes) -> dict:
    client = bmc.client
    return {"host": client.host, "port": client.port, "user": client.user, "password": client.password, **changes}


def latest_recovery(context, name: str) -> dict:
    return [task for task in tasks.list_tasks(context) if task["node"] == name and task["kind"] == "recover"][-1]


def nodes_area(context, leader) -> NodesArea:
    """The `nodes` remote object of a coordinator leading under `leader`."""
    return NodesArea(dataclasses.replace(context, leadership=SimpleNamespace(leader_node=leader,
                                                                             current_leader=lambda: None)))


def cached_as(context, task: dict) -> None:
    """Until the leader's cache shows `task` as recorded (its retry is looked for there first; a real one falls
    due seconds after the cache shows it)."""
    assert eventually(lambda: (context.cache.tasks.get(task["id"]) or {}).get(OWN_VALUE) == task)


def run_recovery(context, leader, name: str) -> dict:
    """Run the node's latest recovery task, as the leader's runner does; the task as recorded after."""
    RecoveryExecution(context, VMControl(context), latest_recovery(context, name), leader, 2).run()
    return latest_recovery(context, name)


def recover(context, leader, name: str) -> dict:
    record_recovery(context, name, leader)
    return run_recovery(context, leader, name)


# -- what the levels prove ------------------------------------------------------------------------------------


def test_an_io_fence_is_not_accepted_when_the_bmc_answered_with_a_refusal(context, leader, powered_host):
    host, bmc = powered_host
    configure(context, fence_chain=["ipmi", "stand-in-io"], accept_io_fence=True)
    node(context, "hv1", "dead", bmc_of(bmc, password="not-the-password"))
    others_running(context)

    task = recover(context, leader, "hv1")

    assert task["state"] == "failed", task
    assert context.store.read(schema.node_key("hv1", "daemon_state")) == "dead", "not believed fenced"
    assert host.running
    [power, storage, verdict] = task["fence"]
    assert power["policy"] == "ipmi" and power["device_answered"] is True, power
    assert storage["confirmed"] and not verdict["confirmed"]
    assert "a power level's device answered" in verdict["explanation"], verdict


def test_an_io_fence_stands_alone_only_when_the_bmc_did_not_answer_at_all(context, leader, powered_host):
    host, bmc = powered_host
    configure(context, fence_chain=["ipmi", "stand-in-io"], accept_io_fence=True)
    node(context, "hv1", "dead", bmc_of(bmc, port=free_port(bmc.client.host, socket.SOCK_DGRAM)))
    others_running(context)

    task = recover(context, leader, "hv1")

    assert task["state"] == "done", task
    assert context.store.read(schema.node_key("hv1", "daemon_state")) == "fenced"
    assert task["fence"][0]["device_answered"] is False


def test_a_bmc_two_nodes_name_is_not_used_to_fence_either(context, leader, powered_host):
    host, bmc = powered_host
    configure(context, fence_chain=["ipmi"])
    node(context, "hv1", "dead", bmc_of(bmc))
    node(context, "hv2", "run", bmc_of(bmc, host=bmc.client.host.upper()))
    node(context, "hv3", "run")

    task = recover(context, leader, "hv1")

    assert task["state"] == "failed", task
    assert host.running, "the shared BMC was not powered off: it may be hv2's host"
    assert "is named by node(s) hv2 too" in task["fence"][0]["explanation"], task["fence"]
    assert "is named by node(s) hv1 too" in _info_table(nodes_area(context, leader).info("hv2")), \
        "node info says so before any fence"


# -- guards and retries ---------------------------------------------------------------------------------------


def test_a_recovery_resumed_when_most_nodes_look_dead_fences_nothing(context, leader, policies):
    configure(context, fence_chain=["counting-power"])
    node(context, "hv1", "dead")
    node(context, "hv3", "run")
    record_recovery(context, "hv1", leader)  # recorded while hv1 alone was dead; then its leader died
    node(context, "hv2", "dead")

    task = run_recovery(context, leader, "hv1")

    assert policies.counting.calls == [], "no level was run"
    assert task["state"] == "failed" and "2 of 3 nodes look dead at once" in task["reason"], task


def test_a_recovery_resumed_in_maintenance_mode_fences_nothing(context, leader, policies):
    configure(context, fence_chain=["counting-power"])
    node(context, "hv1", "dead")
    node(context, "hv2", "run")
    node(context, "hv3", "run")
    record_recovery(context, "hv1", leader)
    configure(context, maintenance=True)

    task = run_recovery(context, leader, "hv1")

    assert policies.counting.calls == []
    assert task["state"] == "failed" and "maintenance mode" in task["reason"], task
    assert recovery.retry_due_recoveries(context, leader, time.time() + 3600) == [], "never retried in maintenance mode"


def test_a_failed_recovery_is_tried_again_with_a_growing_delay_shown_to_the_user(context, leader, policies):
    configure(context, fence_chain=["counting-power"])
    for name, state in (("hv1", "dead"), ("hv2", "run"), ("hv3", "run")):
        node(context, name, state)

    first = recover(context, leader, "hv1")
    assert first["state"] == "failed" and first["attempt"] == 1
    cached_as(context, first)
    assert first["retry_at"] == pytest.approx(first["finished"] + recovery.RETRY_FIRST_S, abs=1)
    assert recovery.retry_due_recoveries(context, leader, first["retry_at"] - 1) == [], "not before its time"
    assert "next attempt" in _task_row(first)["outcome"] and "(attempt 2)" in _task_row(first)["outcome"]

    assert recovery.retry_due_recoveries(context, leader, first["retry_at"]) == ["hv1"]
    assert latest_recovery(context, "hv1")["state"] == "pending"
    second = run_recovery(context, leader, "hv1")
    cached_as(context, second)

    assert policies.counting.calls == ["hv1", "hv1"]
    assert second["id"] == first["id"] and second["attempt"] == 2 and second["state"] == "failed"
    assert second["retry_at"] == pytest.approx(second["finished"] + 2 * recovery.RETRY_FIRST_S, abs=1)
    area = nodes_area(context, leader)
    info = area.info("hv1")
    assert info["recovery"]["retry_at"] == second["retry_at"] and "Next attempt" in _info_table(info)

    node(context, "hv1", "run")
    assert recovery.retry_due_recoveries(context, leader, second["retry_at"]) == [], \
        "a node running again is not fenced"


# -- an administrator's confirmation ---------------------------------------------------------------------------


def test_fence_confirm_refuses_a_node_whose_keepalives_resumed_unless_forced(context, leader):
    area = nodes_area(context, leader)
    node(context, "hv1", "dead")
    node(context, "hv2", "run")
    node(context, "hv3", "run")
    context.store.write(schema.node_key("hv1", "keepalive"), {"time": time.time()})  # its daemon is back

    with pytest.raises(Conflict, match="keepalives resumed since it was marked dead.*--force"):
        area.fence_confirm("hv1")
    with pytest.raises(Conflict, match="hv2 is run, not dead.*nothing was recovered"):
        area.fence_confirm("hv2")
    assert tasks.list_tasks(context) == [], "nothing recovered"
    assert context.store.read(schema.node_key("hv1", "daemon_state")) == "dead"

    confirmed = area.fence_confirm("hv1", force=True)

    assert confirmed["daemon_state"] == "fenced"
    assert [task["node"] for task in tasks.list_tasks(context)] == ["hv1"]


def test_cluster_wide_fence_options_cannot_name_a_bmc_address(context):
    """They apply to every node: a host or port there would have every node's fence power off one BMC."""
    cluster = ClusterArea(context)
    for address in ({"host": "169.254.211.9"}, {"port": 6230}):
        with pytest.raises(InvalidInput, match="would name one BMC for every node"):
            cluster.config(fence_options={"ipmi": {"user": "fencer", **address}})
    assert cluster.config(fence_options={"ipmi": {"user": "fencer", "status_interval": 0.2}})["fence_options"] == \
        {"ipmi": {"user": "fencer", "status_interval": 0.2}}
