"""Long node operations (flush, ready), run by the leader from task records in ZooKeeper.

A task is recorded first (`pending`), then the leader runs it; every step re-reads the cluster and is
idempotent, so if the leader dies midway the next leader runs the same task again and finishes it. The
VM moves of one task run in parallel, `parallelism` at a time, each through the same convergence calls as
a single `vm migrate`.

A task ends ``done``, or, for a flush in which a move was tried and failed and the VM is still on the node,
``failed``: the node then stays ``flushing`` (never ``flushed`` with VMs on it), and the task lists each VM
left behind with the reason (`not_moved`). A VM with no valid target is shut down, which counts as handled.

The leader's runner reads only the task records that changed since its last tick (the cache's change log
says which) and those whose run here ended; it reads them all, and forgets old finished ones, on taking
office and every `audit_interval` seconds (`leader_audit_interval`).
"""
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from kazoo.exceptions import KazooException, NoNodeError
from kazoo.protocol.states import ZnodeStat

from pvc import models, placement, schema
from pvc.cache import OWN_VALUE
from pvc.errors import AlreadyExists, Busy, Conflict, NotFound, PVCError
from pvc.rpc.context import CoordinatorContext
from pvc.rpc.metrics import instruments
from pvc.rpc.vm_control import Desired, Superseded, VMControl
from pvc.store import Store

log = logging.getLogger(__name__)

ACTIVE_STATES = ("pending", "running")
FINISHED_KEPT_S = 3600
FINISHED_KEPT = 100
AUDIT_INTERVAL_S = 60.0
"""How often, by default, the leader's runner reads every task record, not only those that changed."""
CREATE_ATTEMPTS = 20
RECORD_ATTEMPTS = 5
PROGRESS_SAVE_S = 0.25
"""A task's record is saved for its progress (one more VM settled) at most this often; what a save left out is
saved when the gap ends. Saved after each VM, a recovery of 500 wrote its growing record 500 times, one after
another, and every coordinator read each write back."""


@dataclass(frozen=True)
class Decision:
    """What a task records for one VM: the parts of its desired state to write, the nodes to converge (old
    first), and the task's list it goes to (``moved``, ``shut_down``)."""

    changes: dict[str, Any]
    nodes: list[str | None]
    outcome: str
    checks: tuple[tuple[str, int], ...] = ()
    """Znodes (path, version) that must be unchanged when the decision is written, in the same transaction."""


def with_desired(raw: dict[str, Any], current: Desired) -> dict[str, Any]:
    """A cached VM with its desired state replaced by the one read under its lock."""
    return {**raw, OWN_VALUE: current.spec, "state": current.state, "placement": current.placement}


def create_task(context: CoordinatorContext, kind: str, node: str) -> dict[str, Any]:
    """Record a flush or ready of `node`, moving its domain state to flushing/unflushing in the same step;
    an active task of the same kind for that node is returned instead of a second one, and one of the other
    kind is refused (`Conflict`).

    Atomic across callers and coordinators: the transaction that creates the task also sets the node's
    domain state at the version read before the node's tasks were looked at, so of two concurrent creations
    one commits and the other, finding the state changed, looks again and finds the first one's task."""
    domain_path = schema.node_key(node, "domain_state")
    domain_state = "flushing" if kind == "flush" else "unflushing"
    for _attempt in range(CREATE_ATTEMPTS):
        before = context.store.zk.exists(domain_path)
        tasks = [task for task in list_tasks(context) if task["node"] == node]
        for task in tasks:
            if task["state"] in ACTIVE_STATES:
                if task["kind"] == kind:
                    return task
                raise Conflict(f"node {node} has a {task['kind']} in progress (task {task['id']})")
        finished = [task for task in tasks if task["kind"] == kind and task["state"] == "done"]
        if kind == "flush" and finished and context.store.read(domain_path) == "flushed":
            return finished[-1]  # flushed already (a concurrent caller's flush may have just finished)
        task_id = f"{kind}-{node}-{uuid.uuid4().hex[:8]}"
        task = {"id": task_id, "kind": kind, "node": node, "state": "pending", "created": time.time(),
                "total": None, "done": 0, "moved": [], "shut_down": [], "not_moved": [], "errors": []}
        transaction = context.store.transaction().create(schema.task(task_id), task)
        if before is None:
            transaction.create(domain_path, domain_state)
        else:
            transaction.set(domain_path, domain_state, version=before.version)
        try:
            transaction.commit()
        except (Conflict, AlreadyExists):
            continue
        context.cache.nodes.refresh(node)
        return task
    raise Busy(f"node {node} keeps changing; try the {kind} again in a moment")


def task_records(context: CoordinatorContext) -> list[tuple[dict[str, Any], ZnodeStat]]:
    """Every task record with its znode's stat (its creation zxid orders tasks; its version guards a rewrite),
    in the order they were created (by ZooKeeper's order, not by any clock)."""
    found = []
    for task_id in context.store.children(schema.TASKS):
        try:
            data, stat = context.store.zk.get(schema.task(task_id))
        except NoNodeError:
            continue
        task = schema.decode(data)
        if task:
            found.append((task, stat))
    return sorted(found, key=lambda pair: pair[1].czxid)


def list_tasks(context: CoordinatorContext) -> list[dict[str, Any]]:
    """Every task record, in the order they were created."""
    return [task for task, _stat in task_records(context)]


def not_flushed(context: CoordinatorContext, node: str) -> list[str]:
    """While `node` is left ``flushing`` by a flush that failed: each VM that flush could not move and that is
    still on the node, as ``"NAME: reason"``. Empty otherwise."""
    raw = context.cache.nodes.get(node) or {}
    if raw.get("domain_state") != "flushing":
        return []
    flushes = [task for task in list_tasks(context) if task["node"] == node and task["kind"] == "flush"]
    if not flushes or flushes[-1]["state"] != "failed":
        return []
    return [f"{entry['name']}: {entry['reason']}" for entry in flushes[-1].get("not_moved") or []
            if _still_on(context.cache.vms.get(entry["name"]), node)]


def _still_on(raw: dict[str, Any] | None, node: str) -> bool:
    """Whether a VM is still on `node`: placed there, reported there and not known to be stopped, or (after a
    failed move that is still returning it) not yet settled anywhere else."""
    if not raw or raw.get(OWN_VALUE) is None:
        return False
    placement, status = raw.get("placement") or {}, raw.get("status") or {}
    if placement.get("node") == node:
        return True
    if status.get("node") == node and status.get("running") is not False:
        return True
    settled_elsewhere = status.get("node") == placement.get("node") and status.get("running") is True
    return raw.get("state") in schema.RUNNING_STATES and not settled_elsewhere


def get_task(context: CoordinatorContext, task_id: str) -> dict[str, Any]:
    task = context.store.read(schema.task(task_id))
    if task is None:
        raise NotFound(f"no task '{task_id}'")
    return task


def prune_finished(store: Store, tasks: list[dict[str, Any]], leader_node: str | None, now: float) -> list[str]:
    """Forget finished tasks an hour after they finished, and all but the newest `FINISHED_KEPT`: the leader
    reads every task record on every tick, and a finished task's outcome matters only to whoever is waiting
    for it (``--wait``) or looks soon after. The ids forgotten."""
    finished = sorted((task for task in tasks if task["state"] not in ACTIVE_STATES),
                      key=lambda task: task.get("finished") or task["created"], reverse=True)
    stale = [task["id"] for rank, task in enumerate(finished)
             if rank >= FINISHED_KEPT or (task.get("finished") or task["created"]) < now - FINISHED_KEPT_S]
    if stale:
        transaction = store.transaction(leader_node)
        for task_id in stale:
            transaction.delete(schema.task(task_id))
        transaction.commit()
        log.info("forgot %d finished task(s)", len(stale))
    return stale


class TaskRunner:
    """The leader's runner: each leader tick starts the pending tasks not already running here."""

    def __init__(self, context: CoordinatorContext, control: VMControl, parallelism: int,
                 executions: dict[str, type["TaskExecution"]] | None = None,
                 audit_interval: float = AUDIT_INTERVAL_S):
        self._context = context
        self._audit_interval = audit_interval
        self._control = control
        self._parallelism = parallelism
        self._executions = executions or {}
        """Task kind → how it runs, for kinds beyond flush and ready (`pvc.rpc.recovery`)."""
        self._running: set[str] = set()
        self._ended: set[str] = set()
        """Tasks whose run here ended: the next tick reads them again, to start one still active."""
        self._lock = threading.Lock()
        self._seen = -1
        self._leader_node: str | None = None
        self._next_audit = 0.0

    def tick(self, leader_node: str) -> None:
        self._context.cache.catch_up()
        sequence, changed = self._context.cache.tasks.changes(self._seen)
        audit = changed is None or leader_node != self._leader_node or time.monotonic() >= self._next_audit
        with self._lock:
            ended, self._ended = self._ended, set()
        try:
            tasks = list_tasks(self._context) if audit else self._read(set(changed) | ended)
        except BaseException:
            with self._lock:
                self._ended |= ended
            raise
        for task in tasks:
            if task["state"] not in ACTIVE_STATES:
                continue
            with self._lock:
                if task["id"] in self._running:
                    continue
                self._running.add(task["id"])
            threading.Thread(target=self._run, args=(task, leader_node), name=f"task-{task['id']}",
                             daemon=True).start()
        self._seen, self._leader_node = sequence, leader_node
        if not audit:
            return
        self._next_audit = time.monotonic() + self._audit_interval
        try:
            prune_finished(self._context.store, tasks, leader_node, time.time())
        except (PVCError, KazooException) as error:
            log.warning("finished tasks not forgotten this time: %s", error)

    def _read(self, task_ids: set[str]) -> list[dict[str, Any]]:
        """The records of `task_ids` that still exist, in the order they were created."""
        found = []
        for task_id in task_ids:
            try:
                data, stat = self._context.store.zk.get(schema.task(task_id))
            except NoNodeError:
                continue
            task = schema.decode(data)
            if task:
                found.append((task, stat))
        return [task for task, _stat in sorted(found, key=lambda pair: pair[1].czxid)]

    def _run(self, task: dict[str, Any], leader_node: str) -> None:
        started = time.monotonic()
        try:
            execution = self._executions.get(task["kind"], TaskExecution)
            run = execution(self._context, self._control, task, leader_node, self._parallelism)
            run.run()
            instruments.TASK_DURATION.labels(task["kind"], run.task.get("state") or "unknown").observe(
                time.monotonic() - started)
        except PVCError as error:
            log.warning("task %s interrupted: %s", task["id"], error)
        except Exception:
            log.exception("task %s failed", task["id"])
        finally:
            with self._lock:
                self._running.discard(task["id"])
                self._ended.add(task["id"])


class TaskExecution:
    def __init__(self, context: CoordinatorContext, control: VMControl, task: dict[str, Any],
                 leader_node: str, parallelism: int):
        self._context = context
        self._control = control
        self.task = task
        self._leader_node = leader_node
        self._parallelism = parallelism
        self._progress_lock = threading.RLock()
        """Held while the task record changes and while it is saved."""
        self._saved_at = 0.0
        self._pending_save: threading.Timer | None = None

    def run(self) -> None:
        adopted = self._adopt_recorded()
        self._save(state="running")
        if self.task["kind"] == "flush":
            failures = self._flush(adopted)
            not_moved = self._left_behind(failures)
            final = "flushed"
        else:
            self._ready(adopted)
            not_moved = []
            final = "ready"
        left = {entry["name"] for entry in not_moved}
        with self._progress_lock:
            self._cancel_pending_save()
            self.task.update(state="failed" if not_moved else "done", finished=time.time(), not_moved=not_moved,
                             moved=[name for name in self.task["moved"] if name not in left])
            transaction = self._context.store.transaction(self._leader_node)
            if not not_moved:
                transaction.set(schema.node_key(self.task["node"], "domain_state"), final)
            transaction.set(schema.task(self.task["id"]), self.task).commit()
        self._context.cache.nodes.refresh(self.task["node"])
        if not_moved:
            log.warning("task %s failed: %s still on %s", self.task["id"], ", ".join(sorted(left)),
                        self.task["node"])
        else:
            log.info("task %s done: %d moved, %d shut down", self.task["id"], len(self.task["moved"]),
                     len(self.task["shut_down"]))

    def _left_behind(self, failures: dict[str, str]) -> list[dict[str, str]]:
        """The VMs whose move failed and that are still on the node, each with the reason."""
        left = []
        for name, reason in sorted(failures.items()):
            try:
                self._context.cache.vms.refresh(name)
            except KazooException as error:
                log.warning("task %s: %s not re-read (%s)", self.task["id"], name, error)
            if _still_on(self._context.cache.vms.get(name), self.task["node"]):
                left.append({"name": name, "reason": reason})
        return left

    def _adopt_recorded(self) -> list[tuple[str, list[str], None]]:
        """List each VM an earlier run of this task recorded but did not save in the task's record (its leader
        died between the two writes): a placement the task writes names the task (`_record`), so the lists are
        whole whoever finishes the task. A VM still on the node the task empties was shut down there. What to
        converge: every VM an earlier run recorded, listed or not, whose placement still names the task, for this
        run to wait for as for its own moves (a flush that ended while an adopted migration was still under way
        had called its node flushed with the VM still there, and a failed migration put it back)."""
        node, listed = self.task["node"], {*self.task["moved"], *self.task["shut_down"]}
        adopted = []
        for name, raw in sorted(self._vms().items()):
            where = raw.get("placement") or {}
            if where.get("task") != self.task["id"]:
                continue
            outcome = "moved" if self.task["kind"] == "ready" or where.get("node") != node else "shut_down"
            nodes = [(raw.get("status") or {}).get("node"), node, where.get("node")]
            adopted.append((name, list(dict.fromkeys(each for each in nodes if each)), None))
            if name in listed:
                continue
            with self._progress_lock:
                self.task[outcome].append(name)
            log.info("task %s: %s was recorded by an earlier run of it (%s)", self.task["id"], name, outcome)
        return adopted

    def _vms(self) -> dict[str, dict[str, Any]]:
        return {name: raw for name, raw in self._context.cache.vms.snapshot().items() if raw.get(OWN_VALUE)}

    def _leaving(self) -> dict[str, dict[str, Any]]:
        """The VMs placed on the task's node in a running state, as the cache has them."""
        node = self.task["node"]
        return {name: raw for name, raw in self._vms().items()
                if (raw.get("placement") or {}).get("node") == node and raw.get("state") in schema.RUNNING_STATES}

    def _flush(self, adopted: list[tuple[str, list[str], None]]) -> dict[str, str]:
        """Move (or, with no valid target, shut down) every VM running on the node, and wait for those an
        earlier run recorded (`adopted`); the failures by VM."""
        node = self.task["node"]

        def shut_down(current: Desired) -> Decision:
            autostart = bool(current.spec.get("node_autostart"))
            return Decision({"state": "shutdown", "placement": {**current.placement, "autostart": autostart}},
                            [node], "shut_down")

        return self._carry_out(adopted + self._decide_leaving(
            lambda current, target: Decision({"state": "migrate", "placement": {"node": target, "last_node": node}},
                                             [node, target], "moved"),
            shut_down))

    def _decide_leaving(self, moved: Callable[[Desired, str], Decision],
                        parked: Callable[[Desired], Decision]) -> list[tuple[str, list[str]]]:
        """Decide each VM running on the task's node from its desired state read under its lock (`_record`):
        `moved` where the placement finds it a target, `parked` where none may take it (why goes into the task's
        ``shut_down_reasons``, by VM). A VM a command has
        stopped or moved since the node's VMs were listed is that command's, and is left alone."""
        node = self.task["node"]
        batch = placement.Batch(self._context.placement_views())
        decided = []
        for name, raw in sorted(self._leaving().items()):
            def decide(current: Desired, raw: dict[str, Any] = raw) -> Decision | None:
                if current.placement.get("node") != node or current.state not in schema.RUNNING_STATES:
                    return None
                try:
                    target = batch.place(models.vm_view(current.name, with_desired(raw, current)),
                                         self._context.selector(current.spec), current_node=node)
                except Conflict as refused:
                    self.task.setdefault("shut_down_reasons", {})[current.name] = str(refused)
                    return parked(current)
                return moved(current, target)
            decided += self._record(name, decide)
        return decided

    def _ready(self, adopted: list[tuple[str, list[str], None]]) -> None:
        node = self.task["node"]

        def decide(current: Desired) -> Decision | None:
            where = current.placement
            if where.get("last_node") == node and current.state in schema.RUNNING_STATES:
                return Decision({"state": "unmigrate", "placement": {"node": node, "last_node": None}},
                                [where.get("node"), node], "moved")
            if where.get("node") == node and where.get("autostart") and current.state != "remove":
                return Decision({"state": "start", "placement": {"node": node, "last_node": where.get("last_node")}},
                                [node], "moved")
            return None
        moves = list(adopted)
        batch = placement.Batch(self._context.placement_views())
        for name, raw in sorted(self._vms().items()):
            listed = Desired(name, raw[OWN_VALUE], raw.get("state") or "stop", raw.get("placement") or {}, {})
            if decide(listed) is None:
                continue
            view = models.vm_view(name, with_desired(raw, listed))
            refused = placement.memory_rejection(batch.nodes[node], view) if node in batch.nodes else None
            if refused:
                self.task.setdefault("not_returned", {})[name] = f"node {node} {refused}"
                log.info("task %s: %s stays where it is: node %s %s", self.task["id"], name, node, refused)
                continue
            recorded = self._record(name, decide)
            if recorded:
                batch.add(node, view)
            moves += recorded
        self._carry_out(moves)

    def _record(self, name: str, decide: Callable[[Desired], "Decision | None"]) -> list[tuple[str, list[str], int]]:
        """Decide one VM from its desired state read under its lock, and record the decision with the versions
        read (`VMControl.record`); what to converge: ``[(name, nodes, zxid of the record)]``, or ``[]`` for a VM
        left alone.

        `decide` returns None when the VM no longer needs what the task was to do: a command answered since
        the task listed the VM (a stop, a move, a removal) changed it, and wins; the VM is reported in
        ``changed_by_command``, neither moved nor failed. A write that loses to a node's report the leader
        recorded meanwhile (a command cannot: the task holds the lock) is decided again. A placement written
        names the task (``task``), for a later run of it to find (`_adopt_recorded`)."""
        try:
            with self._control.locked(name):
                for _attempt in range(RECORD_ATTEMPTS):
                    current = self._control.desired(name)
                    decision = decide(current)
                    if decision is None:
                        break
                    changes = dict(decision.changes)
                    if "placement" in changes:
                        changes["placement"] = {**changes["placement"], "task": self.task["id"]}
                    try:
                        zxid = self._control.record(name, current, leader_node=self._leader_node,
                                                    checks=decision.checks, **changes)
                    except Superseded:
                        continue
                    with self._progress_lock:
                        self.task[decision.outcome].append(name)
                    return [(name, decision.nodes, zxid)]
                else:
                    raise Busy(f"VM '{name}' kept changing while task {self.task['id']} recorded it")
        except (NotFound, Conflict) as reason:
            log.info("task %s: %s is being removed: %s", self.task["id"], name, reason)
        with self._progress_lock:
            self.task.setdefault("changed_by_command", []).append(name)
        log.info("task %s: %s was changed by a command meanwhile; left to it", self.task["id"], name)
        return []

    def _carry_out(self, moves: list[tuple[str, list[str], int | None]]) -> dict[str, str]:
        """Converge every moved VM, `parallelism` at a time, and wait for each to settle; the failures."""
        self._save(total=len(moves), done=0)
        failures = {}
        with ThreadPoolExecutor(self._parallelism, thread_name_prefix="task-move") as pool:
            for name, error in pool.map(lambda move: self._converge(*move), moves):
                if error:
                    self.task["errors"].append(f"{name}: {error}")
                    failures[name] = error
        return failures

    def _converge(self, name: str, nodes: list[str], since_zxid: int | None = None) -> tuple[str, str | None]:
        """Wait for the VM's move (recorded at `since_zxid`, when known) to settle; a VM removed meanwhile went by
        a command, and is no failure of the task (a recovery would otherwise end ``failed`` and be tried again:
        QEMU fault bench)."""
        error = None
        try:
            self._control.converge(name, nodes, wait=True, timeout=300, hold_calls=True, since_zxid=since_zxid)
        except NotFound:
            with self._progress_lock:
                self.task.setdefault("changed_by_command", []).append(name)
            log.info("task %s: %s was removed while it moved; left to that command", self.task["id"], name)
        except PVCError as failure:
            error = str(failure)
            log.warning("task %s: %s: %s", self.task["id"], name, failure)
        with self._progress_lock:
            self.task["done"] += 1
            self._save_progress()
        return name, error

    def _save_progress(self) -> None:
        """Save the task's progress now, or when `PROGRESS_SAVE_S` since the last save has passed."""
        with self._progress_lock:
            wait = self._saved_at + PROGRESS_SAVE_S - time.monotonic()
            if wait <= 0:
                self._save()
            elif self._pending_save is None:
                self._pending_save = threading.Timer(wait, self._save_pending)
                self._pending_save.daemon = True
                self._pending_save.start()

    def _save_pending(self) -> None:
        with self._progress_lock:
            if self._pending_save is None:
                return  # saved meanwhile
            try:
                self._save()
            except Exception as error:  # a timer's thread: nobody else would hear of it
                log.warning("task %s: progress not saved: %s", self.task["id"], error)

    def _cancel_pending_save(self) -> None:
        """The caller holds `_progress_lock` and writes the whole record."""
        if self._pending_save is not None:
            self._pending_save.cancel()
            self._pending_save = None

    def _save(self, **changes: Any) -> None:
        """Write the task record, with `changes`, whole; a progress save still pending is then done."""
        with self._progress_lock:
            self._cancel_pending_save()
            self.task.update(changes)
            self._context.store.transaction(self._leader_node).set(schema.task(self.task["id"]), self.task).commit()
            self._saved_at = time.monotonic()
