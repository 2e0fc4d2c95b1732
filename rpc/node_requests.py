"""The leader turns nodes' requests into desired state.

A node writes only its own reports; when what it did means the desired state should change (a restart or a
migration has run its course, a live migration failed and the VM stays where it is, a migrated VM could not
start on its new node and should go back), its status report carries a `request` naming the zxid of the
value it acted on. The leader records the change only if that value is still exactly the one the node saw,
with a version-checked transaction that also checks its own leadership: a command issued meanwhile (a stop,
another migrate) always wins, and a deposed leader changes nothing. A VM marked removed is forgotten once
its node reports it undefined (`pvc.rpc.removal`). A request is never consumed: once
recorded, the zxid no longer matches, so handling it again does nothing.
"""
import logging
from typing import Any

from kazoo.exceptions import NoNodeError

from pvc import schema
from pvc.cache import WatchedCollection
from pvc.errors import PVCError
from pvc.rpc import removal
from pvc.store import Store

log = logging.getLogger(__name__)

_MOVING_STATES = ("migrate", "unmigrate")


class NodeRequests:
    def __init__(self, store: Store, vms: WatchedCollection):
        self._store = store
        self._vms = vms

    def handle(self, leader_node: str) -> None:
        """One pass over every VM whose node has asked for something."""
        for name, raw in self._vms.snapshot().items():
            if raw.get("state") == removal.REMOVE:
                try:
                    removal.finish(self._store, name, leader_node)
                except PVCError as error:
                    log.info("removal of %s not finished: %s", name, error)
                continue
            status = raw.get("status") or {}
            request = status.get("request")
            if request:
                try:
                    self._handle(name, status, request, leader_node)
                except PVCError as error:
                    log.info("request %s for %s not recorded: %s", request.get("kind"), name, error)

    def _handle(self, name: str, status: dict[str, Any], request: dict[str, Any], leader_node: str) -> None:
        kind = request.get("kind")
        if kind == "settle":
            self._settle(name, request, leader_node)
        elif kind in ("keep", "return"):
            self._place_back(name, status["node"] if kind == "keep" else request.get("to"), request, leader_node)

    def _settle(self, name: str, request: dict[str, Any], leader_node: str) -> None:
        current = self._read(schema.vm_key(name, "state"))
        if current is None or current[1].mzxid != request.get("state_zxid") or current[0] == request.get("to"):
            return
        self._store.transaction(leader_node) \
            .set(schema.vm_key(name, "state"), request["to"], version=current[1].version) \
            .commit()
        log.info("%s: %s is done; recorded %s", name, current[0], request["to"])

    def _place_back(self, name: str, node: str | None, request: dict[str, Any], leader_node: str) -> None:
        placement = self._read(schema.vm_key(name, "placement"))
        state = self._read(schema.vm_key(name, "state"))
        if node is None or placement is None or state is None or \
                placement[1].mzxid != request.get("placement_zxid"):
            return
        transaction = self._store.transaction(leader_node) \
            .set(schema.vm_key(name, "placement"),
                 {"node": node, "last_node": None, "migration_error": request.get("reason")},
                 version=placement[1].version)
        if state[0] in _MOVING_STATES:
            transaction.set(schema.vm_key(name, "state"), "start", version=state[1].version)
        transaction.commit()
        log.warning("%s stays on %s: %s", name, node, request.get("reason"))

    def _read(self, path: str):
        try:
            data, stat = self._store.zk.get(path)
        except NoNodeError:
            return None
        return schema.decode(data), stat
