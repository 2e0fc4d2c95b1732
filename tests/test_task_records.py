"""Finished flush/ready task records are forgotten after a while, so the leader's every-tick read stays small;
running ones and recent outcomes stay."""
from pvc import schema
from pvc.rpc.tasks import FINISHED_KEPT, FINISHED_KEPT_S, prune_finished

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
