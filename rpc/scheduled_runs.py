"""What autobackup and automirror runs share: the VMs a run covers, its one-at-a-time marker, and the schedule
that starts one.

A run is a leader task recorded together with a marker znode (``RunKind.run_path``) in one transaction, so a
second run is refused while the marker stands; a marker whose task is gone or finished (removed by hand, say)
is dropped by the next start, version-checked, so a new run's marker never goes. The schedule's last start is
kept in ZooKeeper (``RunKind.schedule_path``), so a new leader neither repeats nor skips a run; a due run that
cannot start records why (``RunKind.outcome_path``), which the health checks read.
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from kazoo.exceptions import NoNodeError

from pvc import autobackup_settings, schema
from pvc.cache import OWN_VALUE
from pvc.errors import AlreadyExists, Conflict, InvalidInput, NotFound, PVCError
from pvc.rpc.context import CoordinatorContext
from pvc.rpc.tasks import ACTIVE_STATES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunKind:
    name: str
    """The task kind, ``autobackup`` or ``automirror``."""
    run_path: str
    schedule_path: str
    outcome_path: str

    @property
    def tag_key(self) -> str:
        return f"{self.name}_tag"

    @property
    def schedule_key(self) -> str:
        return f"{self.name}_schedule"


def covered_vms(context: CoordinatorContext, kind: RunKind, vms: Iterable[str] | None, tag: str | None
                ) -> list[str]:
    """The named VMs (every one must exist), or those carrying `tag`."""
    context.cache.catch_up()
    defined = {name for name, raw in context.cache.vms.snapshot().items() if raw.get(OWN_VALUE)}
    if vms:
        names = sorted({schema.check_name("VM", name) for name in vms})
        missing = [name for name in names if name not in defined]
        if missing:
            raise NotFound(f"no VM named {', '.join(missing)}")
        return names
    if not tag:
        raise InvalidInput(f"{kind.tag_key} is not set: name the VMs, or pvc cluster config "
                           f"--{kind.tag_key.replace('_', '-')} TAG")
    return sorted(name for name in defined
                  if tag in (((context.cache.vms.get(name) or {}).get(OWN_VALUE) or {}).get("tags") or {}))


def new_task(kind: RunKind, reason: str, settings: dict[str, Any], snapshot_prefix: str, names: list[str],
             step: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A run's task record, its id and snapshot name from the time (UTC) and a random suffix."""
    stamp, suffix = time.strftime("%Y%m%d%H%M%S", time.gmtime()), uuid.uuid4().hex[:4]
    return {"id": f"{kind.name}-{stamp}-{suffix}", "kind": kind.name, "node": None, "vm": None, "state": "pending",
            "created": time.time(), "reason": reason, "settings": settings, **fields,
            "snapshot": f"{snapshot_prefix}{stamp}-{suffix}", "vms": names,
            "steps": {name: dict(step) for name in names}, "total": len(names), "done": 0, "errors": []}


def record(context: CoordinatorContext, kind: RunKind, task: dict[str, Any], leader_node: str | None
           ) -> dict[str, Any]:
    """Record `task` with its marker; `leader_node` (the schedule's) also records the start in the schedule's
    state, in the same transaction. Refused while another run is in progress."""
    forget_stale_run(context, kind, leader_node)
    transaction = context.store.transaction(leader_node).create(schema.task(task["id"]), task) \
        .create(kind.run_path, {"task": task["id"]})
    if leader_node is not None:
        transaction.put(kind.schedule_path, {"last_run": task["created"]})
    try:
        transaction.commit()
    except AlreadyExists:
        running = context.store.read(kind.run_path) or {}
        raise Conflict(f"an {kind.name} run is in progress (task {running.get('task')})") from None
    return task


def forget_stale_run(context: CoordinatorContext, kind: RunKind, leader_node: str | None) -> None:
    """Drop a run marker whose task is gone or finished, which would otherwise refuse every run."""
    try:
        data, stat = context.store.zk.get(kind.run_path)
    except NoNodeError:
        return
    task = context.store.read(schema.task(schema.decode(data)["task"]))
    if task is None or task["state"] not in ACTIVE_STATES:
        context.store.transaction(leader_node).delete(kind.run_path, stat.version).commit()
        log.warning("%s: dropped the marker of run %s, which is not running", kind.name, schema.decode(data)["task"])


def start_when_due(context: CoordinatorContext, kind: RunKind, leader_node: str,
                   record_run: Callable[[CoordinatorContext, None, str, str], dict[str, Any]],
                   now: float | None = None) -> dict[str, Any] | None:
    """For the leader's tick: record a run (`record_run`) if the kind's schedule says one is due; the task
    recorded, or None."""
    schedule = autobackup_settings.parse_schedule(context.cache.config.get().get(kind.schedule_key),
                                                  kind.schedule_key)
    if schedule is None:
        return None
    now = time.time() if now is None else now
    state = context.store.read(kind.schedule_path)
    if state is None:
        context.store.transaction(leader_node).create(kind.schedule_path, {"last_run": now}).commit()
        return None
    if not schedule.due(state["last_run"], now):
        return None
    forget_stale_run(context, kind, leader_node)
    if context.store.zk.exists(kind.run_path):
        return None
    try:
        task = record_run(context, None, "schedule", leader_node)
    except PVCError as error:
        log.warning("scheduled %s not started: %s", kind.name, error)
        outcome = {"task": None, "state": "failed", "finished": now, "errors": [f"not started: {error}"]}
        context.store.transaction(leader_node).set(kind.schedule_path, {"last_run": now}) \
            .put(kind.outcome_path, outcome).commit()
        return None
    log.info("scheduled %s run %s started for %d VM(s)", kind.name, task["id"], len(task["vms"]))
    return task
