"""The leader turns nodes' requests into desired state.

A node writes only its own reports; when what it did means the desired state should change (a restart or a
migration has run its course, a live migration failed and the VM stays where it is, a migrated VM could not
start on its new node and should go back), its status report carries a `request` naming the zxid of the
value it acted on. The leader records the change only if that value is still exactly the one the node saw,
with a version-checked transaction (`pvc.rpc.vm_control.write_desired`) that also checks its own leadership:
a command issued meanwhile (a stop, another migrate) always wins, and a deposed leader changes nothing. A VM
marked removed is forgotten once its node reports it undefined (`pvc.rpc.removal`). A request is never
consumed: once recorded, the zxid no longer matches, so handling it again does nothing.

A pass visits only the VMs whose records changed since the last one (the cache's change log says which), and
those it left unfinished (a removal waiting for its node, a write that failed); a leader new to its office
visits every VM, and so does an audit every `audit_interval` seconds (`leader_audit_interval`), in case a pass
was cut off midway or the change log missed something. A change that arrives during a pass is numbered after the
point the pass read the log from, so the next pass visits it.
"""
import logging
import time
from typing import Any, Callable

from pvc.cache import WatchedCollection
from pvc.errors import NotFound, PVCError
from pvc.rpc import removal
from pvc.rpc.vm_control import Desired, read_desired, write_desired
from pvc.store import Store

log = logging.getLogger(__name__)

_MOVING_STATES = ("migrate", "unmigrate")

AUDIT_INTERVAL_S = 60.0
"""How often, by default, the leader's pass visits every VM, not only those whose records changed."""


class NodeRequests:
    def __init__(self, store: Store, vms: WatchedCollection, audit_interval: float = AUDIT_INTERVAL_S,
                 catch_up: Callable[[], None] | None = None):
        """`catch_up` (`pvc.cache.ClusterCache.catch_up`) is called before the users of a volume are read for
        its removal: a VM another coordinator has just defined may not be listed in `vms` yet."""
        self._store = store
        self._vms = vms
        self._catch_up = catch_up
        self._audit_interval = audit_interval
        self._seen = -1
        self._leader_node: str | None = None
        self._next_audit = 0.0
        self._unfinished: set[str] = set()

    def handle(self, leader_node: str) -> None:
        """One pass over the VMs whose node may have asked for something since the last pass."""
        sequence, changed = self._vms.changes(self._seen)
        audit = changed is None or leader_node != self._leader_node or time.monotonic() >= self._next_audit
        names = self._vms.names() if audit else sorted(set(changed) | self._unfinished)
        unfinished = {name for name in names if not self._visit(name, leader_node)}
        self._seen, self._leader_node, self._unfinished = sequence, leader_node, unfinished
        if audit:
            self._next_audit = time.monotonic() + self._audit_interval

    def _users(self, volume: str) -> list[str]:
        if self._catch_up is not None:
            self._catch_up()
        return removal.volume_users(self._vms, volume)

    def _visit(self, name: str, leader_node: str) -> bool:
        """Act on one VM's record; False when something is left for a later pass."""
        raw = self._vms.get(name)
        if raw is None:
            return True
        if raw.get("state") == removal.REMOVE:
            try:
                return removal.finish(self._store, name, self._users, leader_node)
            except PVCError as error:
                log.info("removal of %s not finished: %s", name, error)
                return False
        status = raw.get("status") or {}
        request = status.get("request")
        if request:
            try:
                self._handle(name, status, request, leader_node)
            except PVCError as error:
                log.info("request %s for %s not recorded: %s", request.get("kind"), name, error)
                return False
        return True

    def _handle(self, name: str, status: dict[str, Any], request: dict[str, Any], leader_node: str) -> None:
        kind = request.get("kind")
        if kind == "settle":
            self._settle(name, request, leader_node)
        elif kind in ("keep", "return"):
            self._place_back(name, status["node"] if kind == "keep" else request.get("to"), request, leader_node)

    def _settle(self, name: str, request: dict[str, Any], leader_node: str) -> None:
        current = self._read(name)
        if current is None or current.zxids["state"] != request.get("state_zxid") or current.state == request.get("to"):
            return
        write_desired(self._store, name, current, state=request["to"], leader_node=leader_node)
        log.info("%s: %s is done; recorded %s", name, current.state, request["to"])

    def _place_back(self, name: str, node: str | None, request: dict[str, Any], leader_node: str) -> None:
        current = self._read(name)
        if node is None or current is None or current.zxids["placement"] != request.get("placement_zxid"):
            return
        write_desired(self._store, name, current,
                      placement={"node": node, "last_node": None, "migration_error": request.get("reason")},
                      state="start" if current.state in _MOVING_STATES else None, leader_node=leader_node)
        log.warning("%s stays on %s: %s", name, node, request.get("reason"))

    def _read(self, name: str) -> Desired | None:
        try:
            return read_desired(self._store, name)
        except NotFound:
            return None
