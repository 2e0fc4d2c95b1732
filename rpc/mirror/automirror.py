"""An ``automirror`` task: each chosen VM snapshotted and sent to ``automirror_destination``, as a step recorded
before it acts; and the schedule that starts one (``automirror_schedule``, read as autobackup's).

For each VM the leader records the step ``begun`` with the run's snapshot name, takes the snapshot (unless a
leader that died took it already), sends it (`pvc.rpc.mirror.send`: incrementally when the mirror holds the
previous one), then removes the VM's older ``automirror-*`` snapshots beyond ``automirror_keep``, here and on
the destination, and records the step ``done``. Every step repeats safely, so a leader killed midway leaves the
task to the next, which runs the unfinished steps again: a snapshot taken is not taken twice, and a send the
destination holds already counts as done (no VM is sent twice); one the destination is still applying, or a
destination that does not answer, stops the task until the next leader tick. A run whose VMs failed is
``failed`` in `pvc cluster task list`.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Callable

from pvc import automirror_settings, schema
from pvc.errors import AlreadyExists, Busy, InvalidInput, NotFound, NotLeader, PVCError, Unavailable
from pvc.rpc import scheduled_runs
from pvc.rpc.context import CoordinatorContext

if TYPE_CHECKING:
    from pvc.rpc.mirror.send import MirrorSender
    from pvc.rpc.vm_snapshots import VMSnapshots

log = logging.getLogger(__name__)

KIND = "automirror"
SNAPSHOT_PREFIX = "automirror-"
TRANSIENT = (Unavailable, Busy, NotLeader)
FINISHED_STEPS = ("done", "failed", "skipped")


RUNS = scheduled_runs.RunKind(KIND, schema.AUTOMIRROR_RUN, schema.AUTOMIRROR_SCHEDULE, schema.AUTOMIRROR_OUTCOME)


def record_run(context: CoordinatorContext, vms: list[str] | None, reason: str,
               leader_node: str | None = None) -> dict[str, Any]:
    """Record a run of the named VMs, or of those carrying ``automirror_tag``; refused while one is running."""
    settings = automirror_settings.resolve(context.cache.config.get())
    destination = settings["automirror_destination"]
    if not destination:
        raise InvalidInput("automirror_destination is not set: pvc cluster config --automirror-destination NAME (a "
                           "destination stored by pvc vm snapshot send --to NAME)")
    if context.store.read(schema.mirror_destination(destination)) is None:
        raise NotFound(f"no mirror destination named '{destination}': send a snapshot with --to {destination} once")
    names = scheduled_runs.covered_vms(context, RUNS, vms, settings["automirror_tag"])
    task = scheduled_runs.new_task(RUNS, reason, settings, SNAPSHOT_PREFIX, names, {"state": "waiting"})
    return scheduled_runs.record(context, RUNS, task, leader_node)


def start_when_due(context: CoordinatorContext, leader_node: str, now: float | None = None) -> dict | None:
    """For the leader's tick: a run recorded if ``automirror_schedule`` says one is due
    (`pvc.rpc.scheduled_runs`)."""
    return scheduled_runs.start_when_due(context, RUNS, leader_node, record_run, now)


def status(context: CoordinatorContext) -> dict[str, Any]:
    """The settings, the run in progress and the last run's outcome."""
    store = context.store
    return {"settings": automirror_settings.resolve(context.cache.config.get()),
            "running": (store.read(schema.AUTOMIRROR_RUN) or {}).get("task"),
            "last_scheduled": (store.read(schema.AUTOMIRROR_SCHEDULE) or {}).get("last_run"),
            "last_outcome": store.read(schema.AUTOMIRROR_OUTCOME)}


class AutomirrorExecution:
    """One run of an ``automirror`` task on the leader (`pvc.rpc.tasks.TaskRunner` calls `run`)."""

    def __init__(self, context: CoordinatorContext, snapshots: VMSnapshots, sender: MirrorSender,
                 task: dict[str, Any], leader_node: str):
        self._context = context
        self._snapshots = snapshots
        self._sender = sender
        self.task = task
        self._leader_node = leader_node

    def run(self) -> None:
        self._save(state="running")
        for vm in self.task["vms"]:
            if self.task["steps"][vm]["state"] in FINISHED_STEPS:
                continue
            try:
                self._mirror(vm)
            except TRANSIENT:
                raise
            except PVCError as error:
                log.warning("automirror of VM %s failed: %s", vm, error)
                self._step(vm, state="failed", error=str(error))
            self._save(done=sum(1 for step in self.task["steps"].values() if step["state"] in FINISHED_STEPS))
        self._finish()

    def _mirror(self, vm: str) -> None:
        if self._context.store.read(schema.vm(vm)) is None:
            self._step(vm, state="skipped", error=f"VM '{vm}' no longer exists")
            return
        snapshot, destination = self.task["snapshot"], self.task["settings"]["automirror_destination"]
        self._step(vm, state="begun", snapshot=snapshot)
        if self._context.store.read(schema.vm_snapshot(vm, snapshot)) is None:
            self._snapshots.create(vm, snapshot)
        try:
            sent = self._sender.send(vm, snapshot, destination)
            kind, sent_bytes = sent["kind"], sent["bytes"]
        except AlreadyExists:
            # A leader that died after the send: only if the mirror there ends at this very snapshot (a volume
            # name taken there, or an older snapshot of this name, is a refusal like any other).
            if self._sender.newest(vm, destination) != snapshot:
                raise
            kind, sent_bytes = "sent before", 0
        removed = self._prune(vm)
        removed_there = self._sender.prune(vm, destination, self.task["settings"]["automirror_keep"], SNAPSHOT_PREFIX)
        self._step(vm, state="done", kind=kind, bytes=sent_bytes, removed=removed, removed_there=removed_there)

    def _prune(self, vm: str) -> list[str]:
        """Remove the VM's automirror snapshots here older than the newest ``automirror_keep``."""
        keep = self.task["settings"]["automirror_keep"]
        ours = [each["name"] for each in self._snapshots.list(vm) if each["name"].startswith(SNAPSHOT_PREFIX)]
        removed = []
        for name in ours[:-keep]:
            self._snapshots.remove(vm, name)
            removed.append(name)
        return removed

    def _step(self, vm: str, **changes: Any) -> None:
        self.task["steps"][vm] = {**self.task["steps"][vm], **changes}
        self._save()

    def _save(self, **changes: Any) -> None:
        self.task.update(changes)
        self._context.store.transaction(self._leader_node).set(schema.task(self.task["id"]), self.task).commit()

    def _finish(self) -> None:
        steps = self.task["steps"]
        errors = [f"{vm}: {step['error']}" for vm, step in steps.items() if step["state"] == "failed"]
        self.task.update(state="failed" if errors else "done", finished=time.time(), errors=errors,
                         mirrored=sorted(vm for vm, step in steps.items() if step["state"] == "done"))
        outcome = {"task": self.task["id"], "state": self.task["state"], "finished": self.task["finished"],
                   "errors": errors}
        store = self._context.store
        transaction = store.transaction(self._leader_node).set(schema.task(self.task["id"]), self.task)
        if (store.read(schema.AUTOMIRROR_RUN) or {}).get("task") == self.task["id"]:
            transaction.delete(schema.AUTOMIRROR_RUN)
        transaction.put(schema.AUTOMIRROR_OUTCOME, outcome).commit()


def executor(snapshots: VMSnapshots, sender: MirrorSender) -> Callable[..., AutomirrorExecution]:
    """How `pvc.rpc.tasks.TaskRunner` runs an ``automirror`` task: its signature, with the parts bound."""
    def make(context: CoordinatorContext, _control: Any, task: dict[str, Any], leader_node: str,
             _parallelism: int) -> AutomirrorExecution:
        return AutomirrorExecution(context, snapshots, sender, task, leader_node)
    return make
