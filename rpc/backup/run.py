"""An ``autobackup`` task: back up each chosen VM once, as a step recorded before it acts and settled after.

The task is recorded with the VMs and the settings of its moment, together with the run marker
(`pvc.schema.AUTOBACKUP_RUN`) that keeps runs from overlapping. For each VM the leader then:

1. records the step ``begun`` (its snapshot name, destination ``DESTINATION/VM/SNAPSHOT``, full or
   incremental), then takes the whole-VM snapshot (`pvc.rpc.vm_snapshots`, itself recorded first);
2. records the step ``exporting`` with the node chosen, then has that node run its pre command, write the
   export (`pvc.node.autobackup_exports`) and run its post command;
3. settles in one transaction: the step ``done`` and the backup added to the VM's chains
   (`pvc.rpc.backup.chains`), with the chains retention drops marked ``removing``; then the VM's previous
   autobackup snapshot goes (an incremental needs only the newest) and the marked chains' exports go.

A leader that dies midway leaves a step ``begun`` or ``exporting``; the next leader runs the task again and,
for that step, asks the node: an export still being written is waited for, a whole one is settled as done
(the VM is not backed up twice); otherwise the step's snapshot is removed (once its own creation has settled)
and the VM's backup begins again (at most `MAX_ATTEMPTS` times in one run); a settled step is tidied again
(step 3's removals), in case the leader died between settling and tidying. A failure (a pre command, the
export) removes the step's snapshot, the node having removed its partial export, and fails that VM; the run
then ends ``failed``, which the leader's ``autobackup`` health check raises as a fault.
"""
from __future__ import annotations

import logging
import posixpath
import time
from typing import TYPE_CHECKING, Any, Callable

from pvc import autobackup_settings, schema
from pvc.cache import OWN_VALUE
from pvc.errors import Busy, Conflict, InvalidInput, NotFound, NotLeader, OperationFailed, PVCError, Unavailable
from pvc.rpc.areas.storage import STORAGE_ACTION_TIMEOUT_S
from pvc.rpc import scheduled_runs
from pvc.rpc.backup import chains
from pvc.rpc.context import CoordinatorContext

if TYPE_CHECKING:
    from pvc.rpc.vm_backups import VMBackups
    from pvc.rpc.vm_snapshots import VMSnapshots

log = logging.getLogger(__name__)

KIND = "autobackup"
SNAPSHOT_PREFIX = "autobackup-"
MAX_ATTEMPTS = 2
"""Times one VM's backup is begun in one run: once, and once more after a leader died during the first."""
TRANSIENT = (Unavailable, Busy, NotLeader)
"""Failures that say nothing about the VM: the task stops here and the next leader tick resumes it."""
SETTLE_WAIT_S = 120.0
POLL_S = 0.5


RUNS = scheduled_runs.RunKind(KIND, schema.AUTOBACKUP_RUN, schema.AUTOBACKUP_SCHEDULE, schema.AUTOBACKUP_OUTCOME)


def record_run(context: CoordinatorContext, vms: list[str] | None, reason: str,
               leader_node: str | None = None, force_full: bool = False) -> dict[str, Any]:
    """Record a run of the named VMs (all of them must exist), or of those carrying ``autobackup_tag``; refused
    while another run is in progress. `leader_node` (the schedule's) also records the start in the schedule's
    state, in the same transaction. With `force_full`, every VM begins a new chain."""
    settings = autobackup_settings.resolve(context.cache.config.get())
    if not settings["autobackup_destination"]:
        raise InvalidInput("autobackup_destination is not set: pvc cluster config --autobackup-destination PATH "
                           "(a directory under the nodes' backup_roots)")
    names = scheduled_runs.covered_vms(context, RUNS, vms, settings["autobackup_tag"])
    task = scheduled_runs.new_task(RUNS, reason, settings, SNAPSHOT_PREFIX, names, {"state": "waiting", "attempts": 0},
                                   force_full=bool(force_full))
    return scheduled_runs.record(context, RUNS, task, leader_node)


def start_when_due(context: CoordinatorContext, leader_node: str, now: float | None = None) -> dict | None:
    """For the leader's tick: a run recorded if ``autobackup_schedule`` says one is due (`pvc.rpc.scheduled_runs`);
    a schedule seen for the first time counts from that moment; a due run that cannot start (no destination set)
    counts as a failed run, and none starts while one is in progress."""
    return scheduled_runs.start_when_due(context, RUNS, leader_node, record_run, now)


class AutobackupExecution:
    """One run of an ``autobackup`` task on the leader (`pvc.rpc.tasks.TaskRunner` calls `run`)."""

    def __init__(self, context: CoordinatorContext, snapshots: VMSnapshots, backups: VMBackups,
                 task: dict[str, Any], leader_node: str):
        self._context = context
        self._snapshots = snapshots
        self._backups = backups
        self.task = task
        self._leader_node = leader_node
        self._settings = task["settings"]

    def run(self) -> None:
        self._save(state="running")
        for vm in self.task["vms"]:
            if self.task["steps"][vm]["state"] == "done":
                self._tidy(vm)  # a leader may have died between a step's settling and its tidying
            if self.task["steps"][vm]["state"] in ("done", "failed", "skipped"):
                continue
            try:
                self._back_up(vm)
            except TRANSIENT:
                raise
            except PVCError as error:
                log.warning("autobackup of VM %s failed: %s", vm, error)
                self._step(vm, state="failed", error=str(error))
            self._save(done=sum(1 for step in self.task["steps"].values()
                                if step["state"] in ("done", "failed", "skipped")))
        self._finish()

    # -- one VM ----------------------------------------------------------------------------------------

    def _back_up(self, vm: str) -> None:
        self._finish_removals(vm)
        step = self.task["steps"][vm]
        if step["state"] in ("begun", "exporting") and not self._undo_unfinished(vm, step):
            return
        step = self.task["steps"][vm]
        if self._context.store.read(schema.vm(vm)) is None:
            self._step(vm, state="skipped", error=f"VM '{vm}' no longer exists")
            return
        if step["attempts"] >= MAX_ATTEMPTS:
            raise OperationFailed(f"its backup was begun {MAX_ATTEMPTS} times and never finished")
        record = self._chains(vm)
        kind = "full" if self.task.get("force_full") else \
            chains.next_kind(record, self._settings["autobackup_full_interval"])
        parent = chains.latest(record) if kind == "incremental" else None
        snapshot = self.task["snapshot"]
        destination = posixpath.join(self._settings["autobackup_destination"], vm, snapshot)
        self._step(vm, state="begun", snapshot=snapshot, destination=destination, kind=kind, node=None,
                   parent=parent["snapshot"] if parent else None, attempts=step["attempts"] + 1)
        try:
            self._snapshots.create(vm, snapshot)
        except TRANSIENT:
            self._step(vm, attempts=step["attempts"])  # a busy lock or node is no attempt: nothing was taken
            raise
        try:
            manifest, node, agent_uri = self._planned(vm, snapshot, parent)
            self._step(vm, state="exporting", node=node, kind="incremental" if manifest["parent"] else "full",
                       parent=manifest["parent"])
            outcome = self._context.agents.call(node, agent_uri, "autobackup_export", manifest, destination,
                                                timeout=STORAGE_ACTION_TIMEOUT_S)
        except TRANSIENT:
            raise
        except BaseException:
            self._remove_snapshot(vm, snapshot)
            raise
        self._settle(vm, outcome["bytes"], outcome.get("post_command_error"))

    def _planned(self, vm: str, snapshot: str, parent: dict[str, Any] | None) -> tuple[dict[str, Any], str, str]:
        """The export's manifest and node: incremental from `parent` where it still can be (its snapshot is
        still on the cluster with the same volumes, and the node that wrote it runs: only there is the parent's
        export surely beside the new one), else full, on any storage node."""
        manifest, node, agent_uri = None, None, None
        if parent is not None and self._agent_uri(parent.get("node")) is None:
            log.info("autobackup of VM %s: a full export, as node %s, which holds its chain, does not run", vm,
                     parent.get("node"))
            parent = None
        if parent is not None:
            try:
                manifest, node, agent_uri = self._backups.plan_export(vm, snapshot, parent["snapshot"])
            except (NotFound, Conflict, InvalidInput) as reason:
                log.info("autobackup of VM %s: a full export instead of an incremental: %s", vm, reason)
        if manifest is None:
            manifest, node, agent_uri = self._backups.plan_export(vm, snapshot, None)
        if manifest["parent"] is not None:
            return manifest, parent["node"], self._agent_uri(parent["node"])
        return manifest, node, agent_uri

    def _undo_unfinished(self, vm: str, step: dict[str, Any]) -> bool:
        """Resolve a step an earlier leader left: False when its export turns out whole (now settled), True
        once its snapshot is gone and the VM's backup may begin again."""
        if step["state"] == "exporting":
            state = self._export_state(step)
            if state == "whole":
                chain = self._call(step["node"], "backup_chain", step["destination"])
                self._settle(vm, sum(volume["bytes"] for volume in chain[-1]["volumes"]), None)
                log.info("autobackup of VM %s: the export an earlier leader began is whole; settled", vm)
                return False
        self._remove_snapshot(vm, step["snapshot"])
        self._step(vm, state="waiting", node=None)
        log.info("autobackup of VM %s: the backup an earlier leader began was undone; beginning again", vm)
        return True

    def _export_state(self, step: dict[str, Any]) -> str:
        """What became of the step's export, from the node that writes it; from any storage node only once that
        node has stopped or was fenced (a node merely out of reach may still be writing: it is waited for)."""
        raw = self._context.cache.nodes.get(step["node"]) or {}
        daemon_state = raw.get("daemon_state") if raw.get(OWN_VALUE) else None
        if daemon_state not in (None, "run", "stop", "fenced"):
            raise Unavailable(f"node {step['node']}, which was writing {step['destination']}, is {daemon_state}; "
                              "the run waits for it")
        deadline = time.monotonic() + STORAGE_ACTION_TIMEOUT_S
        while True:
            state = self._call(step["node"], "autobackup_state", step["destination"])
            if state != "writing":
                return state
            if time.monotonic() > deadline or not self._context.leadership.is_leader:
                raise Busy(f"node {step['node']} is still writing {step['destination']}")
            time.sleep(POLL_S)

    def _settle(self, vm: str, written_bytes: int | None, post_error: str | None) -> None:
        """One transaction: the step done and the backup in the VM's chains; then what that leaves to remove."""
        step = self.task["steps"][vm]
        backup = {"snapshot": step["snapshot"], "directory": step["destination"], "node": step["node"],
                  "kind": step["kind"], "parent": step["parent"], "bytes": written_bytes, "created": time.time()}
        record = chains.with_backup(self._chains(vm), backup, self._settings["autobackup_keep_chains"])
        step.update(state="done", bytes=written_bytes, post_command_error=post_error)
        self._context.store.transaction(self._leader_node).put(schema.autobackup_vm(vm), record) \
            .set(schema.task(self.task["id"]), self.task).commit()
        self._tidy(vm)

    def _tidy(self, vm: str) -> None:
        """After a settled step: every autobackup snapshot of the VM but its newest backup's goes (an
        incremental needs only that one), and so do the chains retention marked."""
        newest = chains.latest(self._chains(vm))
        for view in self._snapshots.list(vm):
            if view["name"].startswith(SNAPSHOT_PREFIX) and (newest is None or view["name"] != newest["snapshot"]):
                self._remove_snapshot(vm, view["name"])
        self._finish_removals(vm)

    def _finish_removals(self, vm: str) -> None:
        """Remove the exports of the chains retention marked, newest first, then the chains from the record. A
        removal the store refuses is reported with the run (``retention_error``) and tried again by the next
        one; it never keeps the VM from being backed up."""
        record = self._chains(vm)
        for chain_id in list(record["removing"]):
            chain = next((each for each in record["chains"] if each["id"] == chain_id), None)
            try:
                for backup in chains.removal_order(chain) if chain is not None else []:
                    self._removable_where_written(backup)
                    self._call(backup.get("node"), "autobackup_remove", [backup["directory"]])
            except TRANSIENT:
                raise
            except PVCError as error:
                log.warning("autobackup of VM %s: chain %s not removed: %s", vm, chain_id, error)
                self._step(vm, retention_error=f"chain {chain_id} not removed: {error}")
                return
            record = chains.without_chain(record, chain_id)
            self._context.store.transaction(self._leader_node).set(schema.autobackup_vm(vm), record).commit()
            log.info("autobackup of VM %s: chain %s removed (retention)", vm, chain_id)

    def _removable_where_written(self, backup: dict[str, Any]) -> None:
        """Retention removes an export on the node that wrote it: another node's roots may not hold its store,
        so finding nothing there had the chain forgotten with its files left behind."""
        node = backup.get("node")
        if node and self._agent_uri(node) is None:
            raise OperationFailed(f"node {node}, which wrote {backup['directory']}, does not run; the next run "
                                  "removes it")

    def _remove_snapshot(self, vm: str, name: str) -> None:
        """Remove a snapshot once no change to it is under way (a dead coordinator's creation is undone by the
        leader's own pass meanwhile); one already gone is fine."""
        deadline = time.monotonic() + SETTLE_WAIT_S
        while True:
            record = self._context.store.read(schema.vm_snapshot(vm, name))
            if record is None:
                return
            if not record.get("intent"):
                break
            if time.monotonic() > deadline:
                raise Busy(f"snapshot '{vm}@{name}' is still being changed; the run resumes later")
            time.sleep(POLL_S)
        try:
            self._snapshots.remove(vm, name)
        except NotFound:
            pass

    # -- nodes -----------------------------------------------------------------------------------------

    def _agent_uri(self, node: str | None) -> str | None:
        raw = self._context.cache.nodes.get(node) or {}
        facts = raw.get(OWN_VALUE) or {}
        return facts.get("storage_agent_uri") if raw.get("daemon_state") == "run" else None

    def _call(self, node: str | None, method: str, *args: Any) -> Any:
        """Ask `node` (or, when it does not run, any storage node: backup roots are shared stores)."""
        agent_uri = self._agent_uri(node) if node else None
        if agent_uri is None:
            node, agent_uri, _backend = self._backups._storage._storage_node(None)
        return self._context.agents.call(node, agent_uri, method, *args, timeout=STORAGE_ACTION_TIMEOUT_S)

    # -- records ---------------------------------------------------------------------------------------

    def _chains(self, vm: str) -> dict[str, Any]:
        return self._context.store.read(schema.autobackup_vm(vm)) or chains.empty()

    def _step(self, vm: str, **changes: Any) -> None:
        self.task["steps"][vm] = {**self.task["steps"][vm], **changes}
        self._save()

    def _finish(self) -> None:
        """The task's outcome, the run marker gone and the outcome kept for the health check, in one write."""
        steps = self.task["steps"]
        errors = [f"{vm}: {step['error']}" for vm, step in steps.items() if step["state"] == "failed"]
        errors += [f"{vm}: {step[key]}" for vm, step in steps.items()
                   for key in ("post_command_error", "retention_error") if step.get(key)]
        self.task.update(state="failed" if errors else "done", finished=time.time(), errors=errors,
                         backed_up=sorted(vm for vm, step in steps.items() if step["state"] == "done"))
        outcome = {"task": self.task["id"], "state": self.task["state"], "finished": self.task["finished"],
                   "errors": errors}
        store = self._context.store
        transaction = store.transaction(self._leader_node).set(schema.task(self.task["id"]), self.task)
        if (store.read(schema.AUTOBACKUP_RUN) or {}).get("task") == self.task["id"]:
            transaction.delete(schema.AUTOBACKUP_RUN)
        transaction.put(schema.AUTOBACKUP_OUTCOME, outcome).commit()
        (log.warning if errors else log.info)("autobackup run %s %s: %d backed up%s", self.task["id"],
                                              self.task["state"], len(self.task["backed_up"]),
                                              f"; {'; '.join(errors)}" if errors else "")

    def _save(self, **changes: Any) -> None:
        self.task.update(changes)
        self._context.store.transaction(self._leader_node).set(schema.task(self.task["id"]), self.task).commit()


def executor(snapshots: VMSnapshots, backups: VMBackups) -> Callable[..., AutobackupExecution]:
    """How `pvc.rpc.tasks.TaskRunner` runs an ``autobackup`` task: its signature, with the parts bound."""
    def make(context: CoordinatorContext, _control: Any, task: dict[str, Any], leader_node: str,
             _parallelism: int) -> AutobackupExecution:
        return AutobackupExecution(context, snapshots, backups, task, leader_node)
    return make
