"""Remote object `nodes`: what the cluster's nodes are and how they are doing, from the cache."""
from __future__ import annotations

import time
from typing import Any

import Pyro5.server
from kazoo.exceptions import NoNodeError

from pvc import models, schema
from pvc.cache import OWN_VALUE
from pvc.errors import AlreadyExists, Busy, Conflict, NotFound, Unavailable
from pvc.health.faults import health
from pvc.rpc import tasks
from pvc.rpc.context import CoordinatorContext
from pvc.rpc.monitor import KeepaliveWatch
from pvc.rpc.recovery import recovery_task, shared_bmc
from pvc.rpc.retries import retry_safe

RESUMED_SINCE_DEAD = "keepalives resumed since it was marked dead"
RUNS_AGAIN_SINCE_FENCED = "its daemon runs again since the fence: `pvc node ready` returns it to service"


@Pyro5.server.expose
@Pyro5.server.behavior(instance_mode="single")
@retry_safe(reads={"list", "info", "task", "tasks", "log"})
class NodesArea:
    """``client.nodes``: the hypervisors, their state and logs, flush and ready, fence confirmation, and the
    leader's tasks."""

    def __init__(self, context: CoordinatorContext):
        self._context = context
        self._keepalives = KeepaliveWatch(context.store)
        self._keepalives.start()

    def _keepalive_age(self, name: str) -> float | None:
        """Seconds since this coordinator saw the node's keepalive change (None: not yet seen)."""
        return self._keepalives.age(name)

    def _replayed(self, method: str, args: tuple, kwargs: dict[str, Any]) -> Any:
        return self.info(args[0] if args else kwargs["name"])

    def list(self) -> list[dict[str, Any]]:
        """Every node, sorted by name.

        :raises Unavailable: no coordinator answered (nothing else: it refuses nothing)
        """
        self._context.cache.catch_up()
        roles = self._coordinator_roles()
        return [{**self._view(name, raw), "coordinator_state": roles.get(name, "client")}
                for name, raw in sorted(self._context.cache.nodes.snapshot().items())
                if raw.get(OWN_VALUE) is not None]

    def info(self, name: str) -> dict[str, Any]:
        """One node; after a flush that failed, `not_flushed` lists each VM still on it and why
        (``"NAME: reason"``); `changed_by_command`, the VMs its latest flush, ready or recovery left alone
        because a command changed them meanwhile; `faults`, its active faults; `bmc_note`, why its BMC will not
        be used to fence it (other nodes name the same one), else None.

        :raises NotFound: no node of that name
        :raises InvalidInput: a malformed name
        """
        own = [task for task in tasks.list_tasks(self._context) if task.get("node") == name]
        raw = self._raw(name)
        return {**self._view(name, raw), "coordinator_state": self._coordinator_roles().get(name, "client"),
                "not_flushed": tasks.not_flushed(self._context, name),
                "faults": [fault for fault in self._context.fault_views() if fault["node"] == name and fault["active"]],
                "recovery": self._recovery(name),
                "changed_by_command": (own[-1].get("changed_by_command") or []) if own else [],
                "bmc_note": shared_bmc(self._context, name, (raw.get(OWN_VALUE) or {}).get("bmc"))}

    def _recovery(self, name: str) -> dict[str, Any] | None:
        """The node's latest fence-and-recover task: its state, each fencing level's outcome, why it failed, and
        after a failure when it is tried again (``retry_at``, the leader's wall clock; ``attempt`` so far)."""
        recoveries = [task for task in tasks.list_tasks(self._context)
                      if task["node"] == name and task["kind"] == "recover"]
        if not recoveries:
            return None
        task = recoveries[-1]
        return {key: task.get(key) for key in ("id", "state", "fence", "reason", "moved", "shut_down", "fence_s",
                                               "recovery_s", "changed_by_command", "attempt", "retry_at")}

    def fence_confirm(self, name: str, force: bool = False) -> dict[str, Any]:
        """An administrator has made sure the dead node is off (its fence failed): record it ``fenced`` and
        recover its VMs elsewhere. Refused (`Conflict`, nothing recovered) unless the node is ``dead``; refused
        too for a node whose keepalives resumed after it was marked dead (its daemon writes them, so it is
        likely not off), unless `force`: the administrator insists it is off.

        :raises NotFound: no node of that name
        :raises Conflict: the node is not dead, its keepalives resumed (without `force`), or it changed meanwhile
        """
        self._raw(name)
        zk = self._context.store.zk
        path = schema.node_key(name, "daemon_state")
        data, stat = zk.get(path)
        if schema.decode(data) != "dead":
            raise Conflict(f"node {name} is {schema.decode(data)}, not dead: only a dead node is fenced; "
                           "nothing was recovered")
        keepalive = zk.exists(schema.node_key(name, "keepalive"))
        if keepalive is not None and keepalive.mzxid > stat.mzxid and not force:
            raise Conflict(f"node {name}'s {RESUMED_SINCE_DEAD}: its daemon is running, so the node is likely not "
                           "off. Nothing was recovered; make sure it is off, then confirm with --force "
                           "(force=True)")
        # The recovery is recorded with the confirmation: written apart, a coordinator that died between the
        # two left a fenced node whose VMs nothing recovered (no pass looks for a fenced node's recovery).
        transaction = self._context.store.transaction() \
            .set(path, "fenced", version=stat.version) \
            .set(schema.node_key(name, "domain_state"), "flushed") \
            .create(*recovery_task(name))
        if keepalive is not None and not force:
            transaction.check(schema.node_key(name, "keepalive"), keepalive.version)
        try:
            transaction.commit()
        except Conflict:
            raise Conflict(f"node {name} changed while its fence was being confirmed (a keepalive, or another "
                           "confirmation); nothing was recovered: look again with 'pvc node info'") from None
        self._context.cache.nodes.refresh(name)
        return self.info(name)

    def _raw(self, name: str) -> dict[str, Any]:
        schema.check_name("node", name)
        self._context.cache.catch_up()
        raw = self._context.cache.nodes.get(name)
        if raw is None or raw.get(OWN_VALUE) is None:
            raise NotFound(f"no node named '{name}'")
        return raw

    def _view(self, name: str, raw: dict[str, Any]) -> dict[str, Any]:
        notes = {"dead": RESUMED_SINCE_DEAD, "fenced": RUNS_AGAIN_SINCE_FENCED}
        state = raw.get("daemon_state")
        note = notes[state] if state in notes and self._beating_since_marked(name) else None
        return models.node_view(name, raw, keepalive_age_s=self._keepalives.age(name), daemon_note=note,
                                health=health(self._context.fault_views(), name))

    def primary(self, name: str) -> dict[str, Any]:
        """Hand leadership gracefully to the coordinator beside node `name` (upstream's ``node primary``);
        returns ``{"from", "to"}``; nothing to do when it leads already. The handoff itself happens after the
        call returns: the leader finishes its pass, lets go, and the named coordinator takes over (a request
        nobody settles within `pvc.schema.HANDOFF_TIMEOUT_S` is void).

        :raises InvalidInput: a malformed name
        :raises NotFound: no node of that name, or no running coordinator beside it (the ``node`` setting in its
            pvcapid.yaml)
        :raises Busy: another handoff is under way
        """
        beside = self._coordinator_beside(name)
        leader = self._context.leadership.current_leader()
        if beside == leader:
            return {"from": leader, "to": beside}
        self._request_handoff({"to": beside})
        return {"from": leader, "to": beside}

    def secondary(self, name: str) -> dict[str, Any]:
        """Hand leadership gracefully away from the coordinator beside node `name` (upstream's ``node
        secondary``), to whichever other coordinator is next; returns ``{"from", "to": None}``; nothing to do
        when it does not lead (then ``to`` is the current leader).

        :raises InvalidInput: a malformed name
        :raises NotFound: no node of that name, or no running coordinator beside it
        :raises Conflict: that coordinator is the only one running, so no other can lead
        :raises Busy: another handoff is under way
        """
        beside = self._coordinator_beside(name)
        leader = self._context.leadership.current_leader()
        if beside != leader:
            return {"from": leader, "to": leader}
        if not [each for each in self._context.live_coordinators() if each["name"] != beside]:
            raise Conflict(f"coordinator {beside} is the only one running: there is no other to lead")
        self._request_handoff({"away_from": beside})
        return {"from": leader, "to": None}

    def _coordinator_beside(self, name: str) -> str:
        self._raw(name)
        beside = [each["name"] for each in self._context.live_coordinators() if each.get("node") == name]
        if not beside:
            raise NotFound(f"no running coordinator runs beside node {name} (the 'node' setting in its "
                           "pvcapid.yaml)")
        return beside[0]

    def _request_handoff(self, request: dict[str, Any]) -> None:
        """Write the request, replacing one that is void; refused while another is pending."""
        store = self._context.store
        record = {**request, "requested": time.time()}
        try:
            current, stat = store.zk.get(schema.LEADER_HANDOFF)
        except NoNodeError:
            try:
                store.transaction().create(schema.LEADER_HANDOFF, record).commit()
            except AlreadyExists:
                raise Busy("another leadership handoff was requested at the same moment; try again") from None
            return
        pending = schema.decode(current) or {}
        if time.time() - pending.get("requested", 0) <= schema.HANDOFF_TIMEOUT_S and not pending.get("taken_by"):
            raise Busy(f"a leadership handoff is under way ({pending}); try again once it is over")
        store.transaction().set(schema.LEADER_HANDOFF, record, version=stat.version).commit()

    def _coordinator_roles(self) -> dict[str, str]:
        """Upstream's coordinator state of each node a live coordinator runs beside (its ``node`` setting):
        ``primary`` beside the leader, ``secondary`` beside the others; a node no coordinator names is a
        ``client``."""
        leader = self._context.leadership.current_leader()
        return {coordinator["node"]: "primary" if coordinator["name"] == leader else "secondary"
                for coordinator in self._context.live_coordinators() if coordinator.get("node")}

    def _beating_since_marked(self, name: str) -> bool:
        """Whether a keepalive was written after the leader last wrote the node's daemon state (dead, fenced):
        ZooKeeper orders the two writes (their mzxids), so no clock is consulted."""
        zk = self._context.store.zk
        marked = zk.exists(schema.node_key(name, "daemon_state"))
        beat = zk.exists(schema.node_key(name, "keepalive"))
        return bool(marked and beat and beat.mzxid > marked.mzxid)

    def flush(self, name: str) -> dict[str, Any]:
        """Start moving every running VM off the node (domain state flushing → flushed); returns the task,
        which the leader carries out and `task` reports on. A flush already under way is returned, not
        repeated. A flush in which a move fails ends ``failed``, and the node stays ``flushing``.

        :raises NotFound: no node of that name
        :raises InvalidInput: a malformed name
        """
        self._raw(name)
        return tasks.create_task(self._context, "flush", name)

    def ready(self, name: str) -> dict[str, Any]:
        """Return the node to service (unflushing → ready): VMs migrated away come back and VMs waiting
        for it to autostart start; returns the task. A fenced node is released by it (it starts nothing until
        then), once its daemon runs again; a dead one is refused: it may still run its VMs until it is
        fenced.

        :raises NotFound: no node of that name
        :raises Conflict: the node is dead, or fenced and its daemon has not run since
        """
        self._raw(name)
        state = self._context.store.read(schema.node_key(name, "daemon_state"))
        if state == "dead":
            raise Conflict(f"node {name} is dead, not fenced: it may still run its VMs. Once its fence is "
                           "confirmed (by its recovery, or `pvc node fence-confirm`), `node ready` returns it")
        if state == "fenced" and not self._beating_since_marked(name):
            raise Conflict(f"node {name} is fenced and its daemon has not run since: power it on; `node ready` "
                           "returns it to service once it runs again")
        return tasks.create_task(self._context, "ready", name)

    def log(self, name: str, lines: int = 50, offset: int | None = None) -> dict[str, Any]:
        """The end of the node daemon's log, ``{"lines": [...], "offset": N}``, read through the node's agent;
        with `offset` (an earlier answer's), only the lines written since, for following it.

        :raises NotFound: no node of that name
        :raises Unavailable: the node's daemon is not running, or its agent did not answer
        :raises AuthenticationError: the node refused this coordinator
        """
        node = self._view(name, self._raw(name))
        if not node["agent_uri"] or node["daemon_state"] != "run":
            raise Unavailable(f"node {name} is {node['daemon_state']}, not running: its log cannot be read "
                              "through it")
        return self._context.agents.call(name, node["agent_uri"], "daemon_log", lines, offset)

    def task(self, task_id: str) -> dict[str, Any]:
        """One task the leader runs or ran (flush, ready, recover, provision, autobackup): its state (pending,
        running, done, failed), progress and outcome.

        :raises NotFound: no task of that id
        :raises InvalidInput: a malformed id
        """
        return tasks.get_task(self._context, schema.check_name("task", task_id))

    def tasks(self) -> list[dict[str, Any]]:
        """Every task the leader runs or ran within the last hour (flush, ready, recover, provision,
        autobackup), oldest first, each with its ``name`` (its id), state and progress.

        :raises Unavailable: no coordinator answered (nothing else: it refuses nothing)
        """
        return [{"name": task["id"], **task} for task in tasks.list_tasks(self._context)]
