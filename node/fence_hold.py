"""Whether this node may start VMs: not while the leader holds it, and how it says what its daemon does.

A node the leader marked ``dead`` may still run (a daemon that was paused and woke up) or be off; once it is
``fenced``, its recovery starts its VMs elsewhere, and goes on while its host powers on again (a BMC's
power-restore policy, the fence's `power_on_after`, an operator). Its daemon then runs again: it reports what
it finds, stops and undefines what PVC no longer places on it, writes keepalives (so `node info` shows it runs
again), but claims and starts nothing (`pvc.node.reconcile.Reconciler._claim` checks its daemon state in
the same transaction) until the leader releases it. Only `node ready` does that (`fenced` → ``init``,
`pvc.rpc.recovery.ReadyExecution`), whatever `successful_fence` says: with ``none`` its VMs wait on it for
that ready. A recovery task of the node still running holds it too.

The leader writes ``dead``, ``fenced`` and the release; the node writes ``init`` (registering), ``run`` and
``stop``, each only over a state that is not held and at the version it read, so it never overwrites the
leader's word, and only while it owns the node (`NodeOwnership.transaction`).
"""
from __future__ import annotations

import logging

from kazoo.exceptions import NoNodeError

from pvc import schema
from pvc.errors import Conflict
from pvc.node.ownership import NodeOwnership
from pvc.store import Store

log = logging.getLogger(__name__)

ACTIVE_TASK_STATES = ("pending", "running")
WRITE_ATTEMPTS = 5


class FenceHold:
    def __init__(self, store: Store, node: str, ownership: NodeOwnership):
        self._store = store
        self._node = node
        self._ownership = ownership

    @property
    def _state_path(self) -> str:
        return schema.node_key(self._node, "daemon_state")

    def reason(self) -> str | None:
        """Why this node may claim and start nothing now, read in ZooKeeper; None while it may."""
        state = self._store.read(self._state_path)
        if state == "dead":
            return (f"node {self._node} is marked dead: it starts no VM until it is fenced and `pvc node ready` "
                    "returns it to service")
        if state == "fenced":
            return f"node {self._node} is fenced: it starts no VM until `pvc node ready` returns it to service"
        recovery = self._running_recovery()
        if recovery:
            return f"node {self._node} is being recovered (task {recovery}): it starts no VM meanwhile"
        return None

    def _running_recovery(self) -> str | None:
        """The id of a ``recover`` task of this node that has not ended (ids are ``recover-NODE-HEX``)."""
        prefix = f"recover-{self._node}-"
        for task_id in self._store.children(schema.TASKS):
            if not task_id.startswith(prefix) or "-" in task_id[len(prefix):]:
                continue
            task = self._store.read(schema.task(task_id)) or {}
            if task.get("node") == self._node and task.get("state") in ACTIVE_TASK_STATES:
                return task_id
        return None

    def say(self, state: str) -> bool:
        """Write this daemon's own state (``init``, ``run``, ``stop``) unless the leader holds the node; whether
        it was written. Checked against the version read, so a ``dead`` written meanwhile is never lost."""
        for _attempt in range(WRITE_ATTEMPTS):
            try:
                data, stat = self._store.zk.get(self._state_path)
            except NoNodeError:
                return False
            if schema.decode(data) in schema.HELD_DAEMON_STATES:
                return False
            if schema.decode(data) == state:
                return True
            try:
                self._ownership.transaction().set(self._state_path, state, version=stat.version).commit()
                return True
            except Conflict as error:
                if not self._ownership.held:
                    raise
                log.info("daemon state of %s changed while writing %s (%s): reading it again", self._node, state,
                         error)
        return False
