"""The leader starts an autobackup run when ``autobackup_schedule`` says one is due (`pvc.autobackup_settings`).

The time of the last scheduled start is kept in ZooKeeper (`pvc.schema.AUTOBACKUP_SCHEDULE`), written in the
transaction that records the run, so a new leader neither repeats nor skips one. A schedule seen for the first
time counts from that moment; a due run that cannot start (no destination set) counts as a failed run. While
a run is in progress (`pvc.schema.AUTOBACKUP_RUN`), none is started: a due run waits for it to end.
"""
import logging
import time

from pvc import autobackup_settings, schema
from pvc.errors import PVCError
from pvc.rpc.backup import run
from pvc.rpc.context import CoordinatorContext

log = logging.getLogger(__name__)


def start_when_due(context: CoordinatorContext, leader_node: str, now: float | None = None) -> dict | None:
    """For the leader's tick: record a run if the schedule says one is due; the task recorded, or None."""
    config = context.cache.config.get()
    schedule = autobackup_settings.parse_schedule(config.get("autobackup_schedule"))
    if schedule is None:
        return None
    now = time.time() if now is None else now
    state = context.store.read(schema.AUTOBACKUP_SCHEDULE)
    if state is None:
        context.store.transaction(leader_node).create(schema.AUTOBACKUP_SCHEDULE, {"last_run": now}).commit()
        return None
    if not schedule.due(state["last_run"], now):
        return None
    run.forget_stale_run(context, leader_node)
    if context.store.zk.exists(schema.AUTOBACKUP_RUN):
        return None
    try:
        task = run.record_run(context, None, "schedule", leader_node)
    except PVCError as error:
        log.warning("scheduled autobackup not started: %s", error)
        outcome = {"task": None, "state": "failed", "finished": now, "errors": [f"not started: {error}"]}
        context.store.transaction(leader_node).set(schema.AUTOBACKUP_SCHEDULE, {"last_run": now}) \
            .put(schema.AUTOBACKUP_OUTCOME, outcome).commit()
        return None
    log.info("scheduled autobackup run %s started for %d VM(s)", task["id"], len(task["vms"]))
    return task
