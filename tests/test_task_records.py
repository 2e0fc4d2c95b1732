"""Finished flush/ready task records are forgotten after a while, so the leader's every-tick read stays small;
running ones and recent outcomes stay; and the leader's every-tick passes read task records only when something
changed."""
import threading
import time

import pytest
from kazoo.exceptions import ConnectionLoss

from pvc import plugin_manager, schema
from pvc.cache import OWN_VALUE, ClusterCache
from pvc.rpc import tasks
from pvc.rpc.context import CoordinatorContext
from pvc.rpc.recovery import record_missing_recoveries
from pvc.rpc.tasks import FINISHED_KEPT, FINISHED_KEPT_S, TaskExecution, TaskRunner, prune_finished
from pvc.rpc.vm_control import VMControl

from helpers import eventually

NOW = 1_000_000.0


def record(store, task_id, state, created, finished=None):
    task = {"id": task_id, "kind": "flush", "node": "hv1", "state": state, "created": created}
    if finished is not None:
        task["finished"] = finished
    store.transaction().create(schema.task(task_id), task).commit()
    return task


def test_old_and_surplus_finished_tasks_are_forgotten_running_ones_kept(store):
    tasks = [record(store, "running-old", "running", NOW - 10 * FINISHED_KEPT_S),
             record(store, "pending-old", "pending", NOW - 10 * FINISHED_KEPT_S),
             record(store, "done-old", "done", NOW - 2 * FINISHED_KEPT_S, NOW - FINISHED_KEPT_S - 1)]
    tasks += [record(store, f"done-{n:03}", "done", NOW - 600, NOW - 500 + n) for n in range(FINISHED_KEPT + 2)]

    forgotten = prune_finished(store, tasks, None, NOW)

    assert sorted(forgotten) == ["done-000", "done-001", "done-old"]
    remaining = set(store.children(schema.TASKS))
    assert {"running-old", "pending-old", f"done-{FINISHED_KEPT + 1:03}", "done-002"} <= remaining
    assert len(remaining) == FINISHED_KEPT + 2


def test_nothing_to_forget_writes_nothing(store):
    tasks = [record(store, "recent", "done", NOW - 60, NOW - 30)]

    assert prune_finished(store, tasks, None, NOW) == []
    assert store.children(schema.TASKS) == ["recent"]


class Probe:
    """A task kind whose run only says it ran (the runner, not the task's work, is under test)."""
    ran: list[str] = []

    def __init__(self, context, control, task, leader_node, parallelism):
        self.task = task

    def run(self) -> None:
        Probe.ran.append(self.task["id"])


def test_the_runner_reads_only_task_records_that_changed(store, mocker):
    cache = ClusterCache(store)
    cache.start()
    context = CoordinatorContext("test-leader", {}, store, cache, plugins=None, agents=None, leadership=None)
    runner = TaskRunner(context, control=None, parallelism=1, executions={"probe": Probe})
    for n in range(30):
        record(store, f"done-{n:02}", "done", time.time(), time.time())
    leader = store.zk.create(f"{schema.ELECTION}/leader-", b"", ephemeral=True, sequence=True)
    reads = mocker.spy(store.zk, "get")

    runner.tick(leader)
    assert reads.call_count >= 30, "a leader's first tick reads every task record"
    reads.reset_mock()
    runner.tick(leader)
    assert reads.call_count == 0, "nothing changed"

    store.transaction().create(schema.task("probe-1"), {"id": "probe-1", "kind": "probe", "node": "hv1",
                                                        "state": "pending", "created": time.time()}).commit()
    runner.tick(leader)
    assert [call.args[0] for call in reads.call_args_list] == [schema.task("probe-1")]
    assert eventually(lambda: Probe.ran[:1] == ["probe-1"], 5)


def test_a_node_that_stays_dead_costs_no_task_reads_once_its_recovery_is_recorded(store, mocker):
    """The leader checks every tick that each dead node has a recovery since it was marked; a node whose fence
    failed stays dead for hours, and the cache, not every task record, answers that it has one."""
    cache = ClusterCache(store)
    cache.start()
    context = CoordinatorContext("test-leader", {}, store, cache, plugins=None, agents=None, leadership=None)
    leader = store.zk.create(f"{schema.ELECTION}/leader-", b"", ephemeral=True, sequence=True)
    for name, state in (("hv1", "run"), ("hv2", "run"), ("hv3", "dead")):
        store.write(schema.node(name), {"name": name})
        store.write(schema.node_key(name, "daemon_state"), state)
    for n in range(20):
        record(store, f"done-{n:02}", "done", time.time(), time.time())
    assert eventually(lambda: (cache.nodes.get("hv3") or {}).get("daemon_state") == "dead")
    reads = mocker.spy(tasks, "task_records")

    assert record_missing_recoveries(context, leader, set()) == ["hv3"]
    assert reads.call_count == 1
    assert eventually(lambda: any(((cache.tasks.get(name) or {}).get(OWN_VALUE) or {}).get("kind") == "recover"
                                  for name in cache.tasks.names()))
    for _tick in range(5):
        assert record_missing_recoveries(context, leader, set()) == []
    assert reads.call_count == 1, "the cache holds the dead node's recovery"

    store.write(schema.node_key("hv3", "daemon_state"), "run")
    store.write(schema.node_key("hv3", "daemon_state"), "dead")
    assert eventually(lambda: record_missing_recoveries(context, leader, set()) == ["hv3"]), \
        "marked dead again: a new recovery"
    recoveries = [task for task, _stat in tasks.task_records(context) if task["kind"] == "recover"]
    assert [task["node"] for task in recoveries] == ["hv3", "hv3"]


def test_a_flush_whose_leader_died_between_its_records_and_their_save_lists_every_vm_it_moved(store, mocker):
    """The flush records each VM's move, then saves its own record with the VMs it moved; a leader that dies
    between the two left a record that moved nothing, and the next leader, finding no VM left on the node,
    finished it so (fault checker, lab family: a placement no task or command had made). Each placement the
    task writes names it, and the run that finishes the task lists what an earlier one recorded, and waits for
    those moves as for its own before it calls the node flushed."""
    cache = ClusterCache(store)
    cache.start()
    context = CoordinatorContext("test-leader", {}, store, cache, plugin_manager.load(), agents=None,
                                 leadership=None)
    leader = store.zk.create(f"{schema.ELECTION}/leader-", b"", ephemeral=True, sequence=True)
    for name in ("hv1", "hv2"):
        store.write(schema.node(name), {"name": name})
        store.write(schema.node_key(name, "keepalive"), {"time": time.time()})
        store.write(schema.node_key(name, "domain_state"), "ready")
        store.write(schema.node_key(name, "daemon_state"), "run")
    names = ["leaving1", "leaving2", "leaving3"]
    for name in names:
        store.write(schema.vm(name), {"name": name, "memory_mib": 512, "vcpus": 1})
        store.write(schema.vm_key(name, "state"), "start")
        store.write(schema.vm_key(name, "placement"), {"node": "hv1", "last_node": None})
        store.write(schema.vm_key(name, "status"), {"node": "hv1", "running": True})
    assert eventually(lambda: all(len(cache.vms.get(name) or {}) == 4 for name in names))
    assert eventually(lambda: (cache.nodes.get("hv2") or {}).get("daemon_state") == "run")
    task = tasks.create_task(context, "flush", "hv1")

    mocker.patch.object(TaskExecution, "_carry_out", side_effect=ConnectionLoss("the leader's session ended"))
    with pytest.raises(ConnectionLoss):
        TaskExecution(context, VMControl(context), dict(task), leader, 2).run()
    mocker.stopall()
    assert store.read(schema.task(task["id"]))["moved"] == [], "the leader died before it saved its moves"
    assert eventually(lambda: all((cache.vms.get(name) or {}).get("placement", {}).get("node") == "hv2"
                                  for name in names))

    store.write(schema.vm_key("leaving1", "status"), {"node": "hv2", "running": True})
    resumed = threading.Thread(target=TaskExecution(context, VMControl(context), store.read(schema.task(task["id"])),
                                                    leader, 2).run)
    resumed.start()
    resumed.join(2.0)
    assert resumed.is_alive(), "the resumed flush waits for the moves it adopted, as for its own"
    assert store.read(schema.node_key("hv1", "domain_state")) != "flushed", "two VMs are not on hv2 yet"
    for name in names[1:]:
        store.write(schema.vm_key(name, "status"), {"node": "hv2", "running": True})
    resumed.join(10)
    finished = store.read(schema.task(task["id"]))
    assert (finished["state"], sorted(finished["moved"]), finished["shut_down"]) == ("done", names, []), finished
    assert store.read(schema.node_key("hv1", "domain_state")) == "flushed"
