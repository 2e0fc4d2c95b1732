"""Fencing a dead node and recovering its VMs, as a task the leader runs (and the next leader resumes).

For every node marked dead that has no ``recover`` task since (just marked, or its leader died before
recording one, or it died during maintenance mode that has ended) the leader records one, unless the cluster
is in maintenance mode or more than half of the nodes look dead at once (that is a ZooKeeper or network fault, not a room of
dead hosts: the task is recorded ``failed`` with that reason, and nothing is fenced). The task:

1. fences the node through the cluster's fencing chain (`fence_chain` in the cluster config: policy names
   from `pvc_fencing_policies`; its *power* levels tried in order until one proves the node off, its *I/O*
   levels, such as a storage blocklist, all applied; an I/O fence alone counts only where the cluster sets
   `accept_io_fence`, for a BMC that loses power with its host). Only a confirmed fence lets anything restart: the node becomes ``fenced`` and ``flushed`` in one transaction that checks it is
   still ``dead``. A chain that confirms nothing ends the task ``failed`` with each level's reason, and an
   administrator who has made sure the node is off says so (`nodes.fence_confirm`), which records the node
   ``fenced`` and runs the recovery;
2. recovers the node's VMs in parallel: each running one is placed on a node its selector and node limit
   allow and started there (its new node may claim it because its old node is ``fenced``), at most
   `recovery_starts_per_node` (pvcapid.yaml) starting on any one node at a time; one with no valid
   target is stopped, and with node_autostart starts again when its home node is ready. With
   `successful_fence` ``none`` (cluster config, or the node's override) nothing is moved: the VMs stay on
   the node, to start when it is made ready again.

A ``ready`` of a node whose fence left something in place (a storage blocklist) first undoes it
(`ReadyExecution`): each confirmed level of its latest recovery whose policy has ``unfence``, once. A fenced
node claims and starts nothing, even once its host runs again, until that ``ready`` releases it (``fenced`` →
``init``, `pvc.node.fence_hold`) and its daemon takes that up (``run``); whatever `successful_fence` says.

Every step re-reads ZooKeeper and is idempotent, so a leader dying midway leaves a task the next leader
finishes.
"""
import logging
import time
import uuid
from collections import Counter, defaultdict, deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Callable

from kazoo.exceptions import NoNodeError
from kazoo.protocol.states import ZnodeStat

from pvc import fence_secrets, fencing_settings, models, placement, schema
from pvc.cache import OWN_VALUE
from pvc.errors import Conflict, PVCError
from pvc.rpc.context import CoordinatorContext
from pvc.rpc import tasks
from pvc.rpc.metrics import instruments
from pvc.rpc.tasks import Decision, TaskExecution
from pvc.rpc.vm_control import Desired
from pvc.secrets_box import SecretsBox

log = logging.getLogger(__name__)

FENCING_POLICIES = "pvc_fencing_policies"
FENCE_LEVEL_TIMEOUT_S = 30.0
"""How long one level of the fencing chain may take before the next is tried."""
RELEASE_WAIT_INTERVALS = 4
"""Keepalive intervals a ready gives a released node's daemon to say ``run``."""
RELEASE_POLL_S = 0.1
RETRY_FIRST_S = 10.0
RETRY_MAX_S = 300.0
"""A failed recovery is tried again after `RETRY_FIRST_S`, then after twice as long each time, at most
`RETRY_MAX_S` apart (`retry_delay`)."""
RETARGET_ATTEMPTS = 3
"""Targets a recovered VM's start is recorded on before it is given up as having no running node to go to."""


class TargetGone(Exception):
    """The node chosen for a recovered VM's start no longer runs: another is chosen."""


def volumes_on(vms: dict[str, dict[str, Any]], node: str) -> list[str]:
    """Every volume (POOL/VOLUME) of the VMs placed on or reported by `node`, for storage fences."""
    return sorted({volume for raw in vms.values()
                   if node in ((raw.get("placement") or {}).get("node"), (raw.get("status") or {}).get("node"))
                   for volume in ((raw.get(OWN_VALUE) or {}).get("volumes") or [])})


def daemon_state(context: CoordinatorContext, node: str) -> tuple[str | None, ZnodeStat | None]:
    """A node's daemon state as ZooKeeper has it now (not the cache), with the stat a versioned write checks;
    (None, None) for a node with none."""
    try:
        data, stat = context.store.zk.get(schema.node_key(node, "daemon_state"))
    except NoNodeError:
        return None, None
    return schema.decode(data), stat


def too_many_dead(context: CoordinatorContext, going: set[str]) -> str | None:
    """Why no node may be fenced now, when more than half of the nodes look dead at once: those marked dead,
    and those (`going`) silent long enough to be marked dead in a moment."""
    states = {name: raw.get("daemon_state") for name, raw in context.cache.nodes.snapshot().items()
              if raw.get(OWN_VALUE)}
    dead = sum(1 for name, state in states.items() if state == "dead" or name in going)
    if states and dead * 2 > len(states):
        return (f"{dead} of {len(states)} nodes look dead at once: more likely a ZooKeeper or network fault "
                "than dead hosts, so none is fenced automatically")
    return None


def bmc_address(bmc: Any) -> tuple[str, int] | None:
    """A node record's BMC as one comparable address (host without case, port defaulting to IPMI's 623)."""
    if not isinstance(bmc, dict) or not bmc.get("host"):
        return None
    return str(bmc["host"]).strip().lower(), int(bmc.get("port") or 623)


def shared_bmc(context: CoordinatorContext, node: str, bmc: Any) -> str | None:
    """Why `node` must not be powered off through its BMC: other nodes name the same one, so the power-off
    could hit another host and "off" would prove nothing about this one. None when its BMC is its own.

    Checked when the leader would fence, not when a node registers: the records that matter are those at the
    moment of the fence, and a node daemon that refused to start over a colleague's typo would protect
    nothing."""
    address = bmc_address(bmc)
    if address is None:
        return None
    others = sorted(name for name, raw in context.cache.nodes.snapshot().items()
                    if name != node and bmc_address((raw.get(OWN_VALUE) or {}).get("bmc")) == address)
    if not others:
        return None
    return (f"node {node}'s BMC {address[0]}:{address[1]} is named by node(s) {', '.join(others)} too: powering it "
            f"off could power off another host and prove nothing about this one; give each node its own bmc_host")


class RecoveryExecution(TaskExecution):
    """A ``recover`` task: fence the node, then restart its VMs elsewhere."""

    def run(self) -> None:
        node = self.task["node"]
        started = time.monotonic()
        self._adopt_recorded()
        self._save(state="running", attempt=self.task.get("attempt") or 1, retry_at=None)
        if self._daemon_state() == "dead":
            held = self._held()
            if held:
                self._failed(held)
                log.warning("node %s not fenced: %s", node, held)
                return
            confirmed = self._fence()
            self._save(fence_s=round(time.monotonic() - started, 2))
            outcome = "confirmed" if confirmed else "failed"
            instruments.FENCE_DURATION.labels(outcome).observe(time.monotonic() - started)
            instruments.FENCES.labels(",".join(level["policy"] for level in self.task.get("fence") or []) or "none",
                                      outcome).inc()
            if not confirmed:
                self._failed("fence not confirmed: " + "; ".join(
                    f"{level['policy']}: {level['explanation']}" for level in self.task["fence"]))
                log.warning("node %s: %s; nothing is restarted", node, self.task["reason"])
                return
        if self._daemon_state() != "fenced":
            self._finish("failed", reason=f"node {node} is {self._daemon_state()}, not fenced: nothing restarted")
            return
        action = fencing_settings.resolve(self._context.cache.config.get(), node).successful_fence
        if action == "none":
            self._finish("done", reason="successful_fence is none: its VMs stay on it, to start when it is ready")
            log.info("node %s fenced; successful_fence is none, so none of its VMs is moved", node)
            return
        recovering = time.monotonic()
        failures = self._recover()
        self._save(recovery_s=round(time.monotonic() - recovering, 2))
        instruments.RECOVERY_DURATION.observe(time.monotonic() - recovering)
        if failures:
            self._failed("; ".join(f"{name}: {error}" for name, error in sorted(failures.items())))
        else:
            self._finish("done")
        log.info("node %s recovered: %d restarted elsewhere, %d stopped", node, len(self.task["moved"]),
                 len(self.task["shut_down"]))

    def _daemon_state(self) -> str | None:
        return self._context.store.read(schema.node_key(self.task["node"], "daemon_state"))

    def _held(self) -> str | None:
        """Why no node may be fenced now: the guards that decided to record this task, applied again, since the
        leader that runs it (one resuming it after a failover, or a retry) may find the cluster changed."""
        if self._context.cache.config.get().get("maintenance"):
            return "the cluster is in maintenance mode: no node is fenced (tried again once it ends)"
        return too_many_dead(self._context, set())

    def _failed(self, reason: str) -> None:
        """End this attempt ``failed`` with the time of the next (`retry_delay`), which the leader starts then
        (`retry_due_recoveries`) while the node is still dead or fenced."""
        attempt = self.task.get("attempt") or 1
        self._finish("failed", reason=reason, retry_at=round(time.time() + retry_delay(attempt), 1))

    def _fence(self) -> bool:
        """Run the chain: *power* levels in order until one proves the node off, every *I/O* level whatever
        the power levels did (its storage clients must be cut before anything restarts). The node is recorded
        ``fenced`` once it is proven off, or, where the cluster accepts an I/O fence alone
        (`accept_io_fence`), once every I/O level of a chain that has some proved it isolated and no power
        level's device answered: a BMC that answered (the chassis on, a password refused) says the node may
        well run, and only one that could not be reached at all may have lost power with its host.

        A node whose BMC another node names too is not powered off through it (`shared_bmc`)."""
        node = self.task["node"]
        subject = {"name": node, **(self._context.store.read(schema.node(node)) or {}),
                   "volumes": volumes_on(self._vms(), node)}
        config = self._context.cache.config.get()
        chain = config.get("fence_chain") or list(schema.DEFAULT_FENCE_CHAIN)
        options = config.get("fence_options") or {}
        policies = self._context.plugins.registry(FENCING_POLICIES)
        box = SecretsBox(self._context.settings["cluster_secret"])
        sharing = shared_bmc(self._context, node, subject.get("bmc"))
        self.task["fence"] = []
        off, isolated, unreachable = False, [], []
        for name in chain:
            policy = policies.get(name)
            kind = getattr(policy, "kind", "power")
            if kind == "power" and off:
                continue
            answered = None
            if policy is None:
                proven, explanation = "failed", f"no fencing policy named {name!r} is loaded"
            elif kind == "power" and sharing:
                proven, explanation = "failed", sharing
            else:
                try:
                    result = policy.fence(fence_secrets.opened_node(box, subject),
                                          fence_secrets.opened_options(box, name, options.get(name) or {}),
                                          time.monotonic() + FENCE_LEVEL_TIMEOUT_S)
                    proven, explanation = result.proven, result.reason
                    answered = getattr(result, "device_answered", None)
                except Exception as error:
                    proven, explanation = "failed", f"failed: {error}"
            confirmed = proven == ("isolated" if kind == "io" else "off")
            off = off or (kind == "power" and confirmed)
            if kind == "io":
                isolated.append(confirmed)
            elif not confirmed:
                unreachable.append(answered is False)
            level = {"policy": name, "kind": kind, "proven": proven, "confirmed": confirmed,
                     "explanation": explanation}
            if kind == "power" and not confirmed:
                level["device_answered"] = answered
            self.task["fence"].append(level)
            self._save()
            log.warning("node %s: fencing level %s (%s): %s (%s)", node, name, kind,
                        f"confirmed {proven}" if confirmed else "not confirmed", explanation)
        if off:
            return self._record_fenced()
        if isolated and all(isolated):
            if not config.get("accept_io_fence"):
                why = "the cluster does not accept an I/O fence alone"
            elif not all(unreachable):
                why = ("a power level's device answered (the node may be running), and an I/O fence alone is "
                       "accepted only when the BMC could not be reached at all")
            else:
                return self._record_fenced()
            self.task["fence"].append({"policy": "accept_io_fence", "kind": "io", "proven": "failed",
                                       "confirmed": False,
                                       "explanation": f"the node is isolated from storage but not proven off: {why}"})
        return False

    def _record_fenced(self) -> bool:
        node = self.task["node"]
        path = schema.node_key(node, "daemon_state")
        state, stat = daemon_state(self._context, node)
        if state != "dead":
            return state == "fenced"
        self._context.store.transaction(self._leader_node) \
            .set(path, "fenced", version=stat.version) \
            .set(schema.node_key(node, "domain_state"), "flushed") \
            .commit()
        self._context.cache.nodes.refresh(node)
        return True

    def _recover(self) -> dict[str, str]:
        """Start each running VM of the fenced node elsewhere (or stop it where none may take it), at most
        `recovery_starts_per_node` at a time on any one node; the failures by VM.

        Every VM's new node is chosen first, as one batch; a start is recorded (each from the VM's desired state
        read under its lock: a VM a command has stopped or moved since is left to it) only while fewer than the
        bound of this recovery's starts are recorded on that node and not settled, and the next once one
        settles. The records are the whole truth: an earlier run's starts that have not settled (a leader that
        died midway) hold their node's places and are waited for first (`_unsettled_starts`).

        Each node has its own workers, as many as its bound, and a start is recorded in the worker that then
        waits for it: a node slow to start its VMs holds up only its own queue, never the starts on other nodes,
        and the records (a lock, a read and a write in ZooKeeper each) are made side by side."""
        starting = self._unsettled_starts()
        queues = self._targets()
        bound = self._context.settings["recovery_starts_per_node"]
        with self._progress_lock:
            self.task["moved"] += [name for name in starting if name not in self.task["moved"]]
        self._save(total=len(starting) + sum(len(queue) for queue in queues.values()), done=0)
        failures: dict[str, str] = {}
        under_way: dict[Future, str] = {}
        workers: dict[str, ThreadPoolExecutor] = {}

        def begin(name: str, target: str, work: Callable[[str, str], tuple[str, str | None]]) -> None:
            if target not in workers:
                workers[target] = ThreadPoolExecutor(bound, thread_name_prefix=f"recovery-{target}")
            under_way[workers[target].submit(work, name, target)] = target

        try:
            for name, target in sorted(starting.items()):
                begin(name, target, self._await_start)
            while True:
                per_node = Counter(under_way.values())
                for target, queue in queues.items():
                    while queue and per_node[target] < bound:
                        begin(queue.popleft(), target, self._start_elsewhere)
                        per_node[target] += 1
                if not under_way:
                    return failures
                settled, _ = wait(under_way, return_when=FIRST_COMPLETED)
                for future in settled:
                    del under_way[future]
                    name, error = future.result()
                    if error:
                        failures[name] = error
                        with self._progress_lock:
                            self.task["errors"].append(f"{name}: {error}")
        finally:
            for pool in workers.values():
                pool.shutdown(wait=True)

    def _start_elsewhere(self, name: str, target: str) -> tuple[str, str | None]:
        """Record the VM's start on `target` and wait for it there, in one of that node's workers. Recorded one
        after the other by the task's own thread, the records set the pace of a large recovery. A target that
        no longer runs (it died after the batch was chosen) gives way to one chosen now: a start recorded on a
        dead node had waited out its whole deadline, counted as that node's recovery's, which had listed its
        VMs already, and the VM stayed down. The record checks that the target's daemon state is still the one
        that said it runs, so a target that dies between that look and the record (its recovery listing its VMs
        in the gap) is chosen again too."""
        for _attempt in range(RETARGET_ATTEMPTS):
            try:
                recorded = self._record(name, self._start_on(target))
                break
            except TargetGone:
                target = self._running_target(name, target)
                if target is None:
                    break
        else:
            target = None
        if target is None:
            return name, "no running node can take it now (its chosen node no longer runs)"
        if not recorded:
            with self._progress_lock:
                self.task["total"] -= 1
            return name, None
        return self._await_start(name, target, recorded[0][2])

    def _await_start(self, name: str, target: str, since_zxid: int | None = None) -> tuple[str, str | None]:
        """Wait for the VM's start on `target`. A target that went dead or was fenced meanwhile (it stopped the
        VM, or fenced itself) leaves the VM to that node's own recovery: no failure of this one, which would
        otherwise end ``failed`` and be tried again for a VM already being moved (fault checker, lab family)."""
        name, error = self._converge(name, [target], since_zxid)
        if error is None:
            return name, None
        state = daemon_state(self._context, target)[0]
        if state in ("dead", "fenced"):
            log.info("task %s: %s: its new node %s is %s now; that node's recovery moves it (%s)", self.task["id"],
                     name, target, state, error)
            return name, None
        return name, error

    def _running_target(self, name: str, target: str) -> str | None:
        if daemon_state(self._context, target)[0] == "run":
            return target
        raw = self._context.cache.vms.get(name) or {}
        if raw.get(OWN_VALUE) is None:
            return target  # removed meanwhile: the record finds it gone
        try:
            chosen = placement.Batch(self._context.placement_views()).place(
                models.vm_view(name, raw), self._context.selector(raw[OWN_VALUE]), current_node=self.task["node"])
        except Conflict:
            return None
        if daemon_state(self._context, chosen)[0] != "run":  # the cache's views lag ZooKeeper's
            return None
        log.info("task %s: %s: its chosen node %s no longer runs; starting it on %s", self.task["id"], name,
                 target, chosen)
        return chosen

    def _targets(self) -> dict[str, deque[str]]:
        """The node each running VM of the fenced node is to start on, chosen as one batch (each placement
        counting the ones before it), as a queue of VMs per node. A VM none may take is stopped now, and with
        node_autostart starts again when its node is ready."""
        node = self.task["node"]
        batch = placement.Batch(self._context.placement_views())
        queues: dict[str, deque[str]] = defaultdict(deque)
        for name, raw in sorted(self._leaving().items()):
            try:
                target = batch.place(models.vm_view(name, raw), self._context.selector(raw[OWN_VALUE]),
                                     current_node=node)
            except Conflict as refused:
                self._record(name, self._stopped(str(refused)))
                continue
            queues[target].append(name)
        return queues

    def _still_here(self, current: Desired) -> bool:
        """Whether a VM is still the recovery's to move: placed on the fenced node, in a running state."""
        return current.placement.get("node") == self.task["node"] and current.state in schema.RUNNING_STATES

    def _start_on(self, target: str) -> Callable[[Desired], Decision | None]:
        def decide(current: Desired) -> Decision | None:
            if not self._still_here(current):
                return None
            state, stat = daemon_state(self._context, target)
            if state != "run":
                raise TargetGone(target)
            return Decision({"state": "start", "placement": {"node": target, "last_node": self.task["node"]}},
                            [target], "moved", checks=((schema.node_key(target, "daemon_state"), stat.version),))
        return decide

    def _stopped(self, reason: str) -> Callable[[Desired], Decision | None]:
        def decide(current: Desired) -> Decision | None:
            if not self._still_here(current):
                return None
            self.task.setdefault("shut_down_reasons", {})[current.name] = reason
            autostart = bool(current.spec.get("node_autostart"))
            return Decision({"state": "stop", "placement": {"node": self.task["node"], "last_node": None,
                                                            "autostart": autostart}}, [], "shut_down")
        return decide

    def _unsettled_starts(self) -> dict[str, str]:
        """The starts this recovery recorded in an earlier run that have not settled, by VM, with their node: a
        VM moved off the fenced node (its ``last_node``) to start elsewhere, and not yet running there."""
        node = self.task["node"]
        unsettled = {}
        for name, raw in self._vms().items():
            where, status = raw.get("placement") or {}, raw.get("status") or {}
            target = where.get("node")
            if where.get("last_node") == node and target not in (None, node) and raw.get("state") == "start" \
                    and not (status.get("node") == target and status.get("running") is True):
                unsettled[name] = target
        return unsettled

    def _finish(self, state: str, **details: Any) -> None:
        self._save(state=state, finished=time.time(), **details)


def retry_delay(attempt: int) -> float:
    """Seconds before a failed recovery is tried again after its `attempt`-th try: doubling from
    `RETRY_FIRST_S`, never more than `RETRY_MAX_S`."""
    return min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** max(0, attempt - 1))


def record_recovery(context: CoordinatorContext, node: str, leader_node: str | None, held: str | None = None) -> None:
    """Record the ``recover`` task of a node just marked dead (or confirmed fenced); with `held`, record it
    already ``failed`` with that reason and the time of its next attempt, so `node info` says why nothing was
    fenced and when it is tried again."""
    try:
        context.store.transaction(leader_node).create(*recovery_task(node, held)).commit()
    except PVCError as error:
        log.warning("recovery of %s not recorded: %s", node, error)


def recovery_task(node: str, held: str | None = None) -> tuple[str, dict[str, Any]]:
    """The path and record of a new ``recover`` task of `node` (`record_recovery`), for a caller that writes it
    with other changes in one transaction."""
    task_id = f"recover-{node}-{uuid.uuid4().hex[:8]}"
    now = time.time()
    return schema.task(task_id), {
        "id": task_id, "kind": "recover", "node": node, "state": "failed" if held else "pending", "created": now,
        "total": None, "done": 0, "moved": [], "shut_down": [], "not_moved": [], "errors": [], "fence": [],
        "reason": held, "attempt": 1, "retry_at": round(now + retry_delay(1), 1) if held else None}


def record_missing_recoveries(context: CoordinatorContext, leader_node: str, going: set[str]) -> list[str]:
    """Record a ``recover`` task for every ``dead`` node that has none since it was marked dead: the node just
    marked, one whose leader died before recording its task, one that died during maintenance mode once that
    ends. Returns the nodes recorded."""
    if context.cache.config.get().get("maintenance"):
        return []
    dead = {}
    for name, raw in context.cache.nodes.snapshot().items():
        if raw.get(OWN_VALUE) and raw.get("daemon_state") == "dead":
            # The cache may lag a recovery that has just recorded the node ``fenced``: only ZooKeeper's own
            # ``dead`` (and the zxid that wrote it) says a marking has no task yet.
            state, stat = daemon_state(context, name)
            if state == "dead":
                dead[name] = stat.mzxid
    covered = _recoveries_held(context)
    dead = {name: marked for name, marked in dead.items() if covered.get(name, 0) < marked}
    if not dead:
        return []
    since = {}
    for task, stat in tasks.task_records(context):
        if task.get("kind") == "recover" and task.get("node") in dead:
            since[task["node"]] = max(since.get(task["node"], 0), stat.czxid)
    recorded = []
    for name, marked in sorted(dead.items()):
        if since.get(name, 0) < marked:
            record_recovery(context, name, leader_node, held=too_many_dead(context, going))
            recorded.append(name)
    return recorded


def _recoveries_held(context: CoordinatorContext) -> dict[str, int]:
    """The creation zxid of the latest ``recover`` task of each node, as the cache holds them: a node that stays
    dead (its fence failed, or is held) is checked every tick, and every task record is read only when the
    cache shows no task since its marking (one just recorded, or truly missing)."""
    latest: dict[str, int] = {}
    for name in context.cache.tasks.names():
        task = (context.cache.tasks.get(name) or {}).get(OWN_VALUE) or {}
        created = context.cache.tasks.created(name)
        if task.get("kind") == "recover" and task.get("node") and created is not None:
            latest[task["node"]] = max(latest.get(task["node"], 0), created)
    return latest


def retry_due_recoveries(context: CoordinatorContext, leader_node: str, now: float) -> list[str]:
    """Start again each failed recovery whose next attempt is due (``retry_at``), when it is its node's
    latest and the node is still ``dead`` (its fence failed, or was held) or ``fenced`` (moving its VMs
    failed): the task becomes ``pending`` with its attempt counted, and the leader's runner takes it. Not in
    maintenance mode. Returns the nodes whose recovery was restarted.

    Every task record is read only while the cache shows a retry due (`_retry_maybe_due`): on most ticks
    none is, and this runs every tick."""
    if context.cache.config.get().get("maintenance") or not _retry_maybe_due(context, now):
        return []
    latest: dict[str, tuple[dict[str, Any], int]] = {}
    for task, stat in tasks.task_records(context):
        if task.get("kind") == "recover":
            latest[task["node"]] = (task, stat.version)
    restarted = []
    for node, (task, version) in sorted(latest.items()):
        if task.get("state") != "failed" or task.get("retry_at") is None or task["retry_at"] > now:
            continue
        if context.store.read(schema.node_key(node, "daemon_state")) not in ("dead", "fenced"):
            continue
        attempt = (task.get("attempt") or 1) + 1
        retried = {**task, "state": "pending", "attempt": attempt, "retry_at": None, "finished": None,
                   "previous_reason": task.get("reason"), "reason": None, "errors": []}
        try:
            context.store.transaction(leader_node).set(schema.task(task["id"]), retried, version=version).commit()
        except PVCError as error:
            log.info("recovery of %s not retried now: %s", node, error)
            continue
        log.warning("node %s: recovery %s tried again (attempt %d); it failed: %s", node, task["id"], attempt,
                    task.get("reason"))
        restarted.append(node)
    return restarted


def _retry_maybe_due(context: CoordinatorContext, now: float) -> bool:
    """Whether the cache shows a failed recovery whose retry is due, of a node it shows dead or fenced. A retry
    falls due at least `RETRY_FIRST_S` after its failure was recorded, long after the cache shows that."""
    nodes = context.cache.nodes
    for name in context.cache.tasks.names():
        task = (context.cache.tasks.get(name) or {}).get(OWN_VALUE) or {}
        if task.get("kind") == "recover" and task.get("state") == "failed" and task.get("retry_at") is not None \
                and task["retry_at"] <= now \
                and (nodes.get(task.get("node")) or {}).get("daemon_state") in ("dead", "fenced"):
            return True
    return False


class ReadyExecution(TaskExecution):
    """A ``ready`` task that first undoes what the node's last fence left in place (`FencingPolicy.unfence`),
    unless that was done already, then returns the node to service as any ``ready`` does. The outcome of each
    unfence is recorded on the recovery task (``unfenced``), so the next ready, or the next leader, does not
    repeat a done one."""

    def run(self) -> None:
        self._unfence()
        if self._release():
            super().run()

    def _release(self) -> bool:
        """Return a fenced node to its daemon (``fenced`` → ``init``: the one daemon state the leader writes
        that is not dead or fenced), then wait for the daemon to say ``run``: only then may it claim the VMs
        this ready brings back. False, with the task ended ``failed``, when it does not in time."""
        node = self.task["node"]
        path = schema.node_key(node, "daemon_state")
        state, stat = daemon_state(self._context, node)
        if state is None:
            return True
        if state == "fenced":
            self._context.store.transaction(self._leader_node).set(path, "init", version=stat.version).commit()
            self._context.cache.nodes.refresh(node)
            log.info("node %s released from its fence: its daemon may start VMs again", node)
        elif state != "init":
            return True
        wait_s = RELEASE_WAIT_INTERVALS * fencing_settings.resolve(self._context.cache.config.get(), node) \
            .keepalive_interval
        deadline = time.monotonic() + wait_s
        while self._context.store.read(path) != "run":
            if time.monotonic() > deadline:
                self._save(state="failed", finished=time.time(), reason=f"node {node} was released from its fence "
                           f"but its daemon did not say run within {wait_s:g} s: nothing was moved to it")
                log.warning("task %s failed: %s", self.task["id"], self.task["reason"])
                return False
            time.sleep(RELEASE_POLL_S)
        return True

    def _unfence(self) -> None:
        node = self.task["node"]
        recoveries = [task for task in tasks.list_tasks(self._context)
                      if task["node"] == node and task["kind"] == "recover"]
        if not recoveries:
            return
        recovery = recoveries[-1]
        done = {entry["policy"] for entry in recovery.get("unfenced") or [] if entry["done"]}
        policies = self._context.plugins.registry(FENCING_POLICIES)
        pending = [level["policy"] for level in recovery.get("fence") or []
                   if level["confirmed"] and level["policy"] not in done
                   and getattr(policies.get(level["policy"]), "unfence", None) is not None]
        if not pending:
            return
        record = {"name": node, **(self._context.store.read(schema.node(node)) or {}),
                  "volumes": volumes_on(self._vms(), node)}
        options = self._context.cache.config.get().get("fence_options") or {}
        box = SecretsBox(self._context.settings["cluster_secret"])
        outcomes = [entry for entry in recovery.get("unfenced") or [] if entry["done"]]
        for name in pending:
            try:
                finished, explanation = policies[name].unfence(
                    fence_secrets.opened_node(box, record),
                    fence_secrets.opened_options(box, name, options.get(name) or {}),
                    time.monotonic() + FENCE_LEVEL_TIMEOUT_S)
            except Exception as error:
                finished, explanation = False, f"failed: {error}"
            outcomes.append({"policy": name, "done": bool(finished), "explanation": explanation})
            log.log(logging.INFO if finished else logging.WARNING, "node %s: unfence %s: %s", node, name,
                    explanation)
        recovery["unfenced"] = outcomes
        self.task["unfence"] = outcomes
        self._context.store.transaction(self._leader_node).set(schema.task(recovery["id"]), recovery).commit()
