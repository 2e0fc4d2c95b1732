"""Faults: what health checks found wrong, one record per problem, kept by the process that raised it.

A check's outcome that is not healthy becomes (or renews) the fault ``node.NODE.CHECK`` or ``cluster.CHECK``:
one record with a count and first and last seen, however many rounds see it. A healthy outcome marks it
cleared; the raiser prunes it `retention_s` later. Only the raiser writes the record (`FaultRaiser`); an
acknowledgement is a child key written by coordinators, and holds the occurrence (``first_seen``) it
acknowledged, so a fault that clears and happens again counts again. Health is 100 minus the deltas of the
active, unacknowledged faults, floored at 0 (`health`).
"""
import logging
import time
from typing import Any, Callable, Iterable

from pvc import schema
from pvc.cache import OWN_VALUE
from pvc.errors import AlreadyExists, NotFound
from pvc.hookspecs import HealthResult
from pvc.store import Store, Transaction

log = logging.getLogger(__name__)

DEFAULT_RETENTION_S = 3600.0
"""How long a cleared fault is kept (shown by ``fault list --all``) before its raiser prunes it."""


class FaultRaiser:
    """The faults of one source (a node, or the cluster for the leader), written only through `transaction`
    (which checks the node's ownership, or the leader's election). `maintenance()` true means nothing new is
    raised: faults already active are still renewed and cleared."""

    def __init__(self, store: Store, node: str | None, transaction: Callable[[], Transaction],
                 maintenance: Callable[[], bool], retention_s: float = DEFAULT_RETENTION_S,
                 clock: Callable[[], float] = time.time):
        self._store = store
        self._node = node
        self._transaction = transaction
        self._maintenance = maintenance
        self._retention_s = retention_s
        self._clock = clock
        self._prefix = schema.fault_id(node, "x")[:-1]
        self._faults: dict[str, dict[str, Any]] | None = None

    def _known(self) -> dict[str, dict[str, Any]]:
        """Our faults as last written; read from ZooKeeper the first time (a restarted raiser continues them)."""
        if self._faults is None:
            self._faults = {}
            for fault_id in self._store.children(schema.FAULTS):
                if fault_id.startswith(self._prefix) and "." not in fault_id[len(self._prefix):]:
                    record = self._store.read(schema.fault(fault_id))
                    if record:
                        self._faults[fault_id] = record
        return self._faults

    def forget(self) -> None:
        """Read our faults from ZooKeeper again before the next write (a leader that was not, meanwhile)."""
        self._faults = None

    def report(self, check: str, result: HealthResult) -> dict[str, Any] | None:
        """Record one outcome of `check`; returns the fault as written, or None when nothing was written."""
        fault_id = schema.fault_id(self._node, check)
        faults = self._known()
        current = faults.get(fault_id)
        now = self._clock()
        active = current is not None and current.get("cleared") is None
        if result.delta <= 0:
            if not active:
                return None
            record = {**current, "cleared": now, "last_seen": now}
        elif active:
            record = {**current, "count": current["count"] + 1, "last_seen": now, "delta": result.delta,
                      "severity": result.level, "message": result.message}
        elif self._maintenance():
            return None
        else:
            record = {"id": fault_id, "source": self._node or schema.CLUSTER_FAULT_SOURCE, "check": check,
                      "severity": result.level, "delta": result.delta, "message": result.message, "count": 1,
                      "first_seen": now, "last_seen": now, "cleared": None}
        self._write(fault_id, record, exists=current is not None)
        faults[fault_id] = record
        return record

    def _write(self, fault_id: str, record: dict[str, Any], exists: bool) -> None:
        """Set or create the record; a record deleted meanwhile (`fault delete`) is made again, counting anew."""
        path = schema.fault(fault_id)
        try:
            if exists:
                self._transaction().set(path, record).commit()
            else:
                self._transaction().create(path, record).commit()
        except NotFound:
            record.update(count=1, first_seen=record["last_seen"])
            if record.get("cleared") is None:
                self._transaction().create(path, record).commit()
        except AlreadyExists:
            self._transaction().set(path, record).commit()

    def prune(self) -> list[str]:
        """Delete our faults cleared longer than the retention ago (with their acknowledgements)."""
        now = self._clock()
        pruned = []
        faults = self._known()
        for fault_id, record in list(faults.items()):
            cleared = record.get("cleared")
            if cleared is None or now - cleared < self._retention_s:
                continue
            transaction = self._transaction()
            if self._store.zk.exists(schema.fault_ack(fault_id)):
                transaction.delete(schema.fault_ack(fault_id))
            try:
                transaction.delete(schema.fault(fault_id)).commit()
            except NotFound:
                pass
            del faults[fault_id]
            pruned.append(fault_id)
        return pruned


def fault_view(fault_id: str, raw: dict[str, Any]) -> dict[str, Any] | None:
    """One fault as a user sees it: its record, whether it is active, acknowledged, and counts against health."""
    record = raw.get(OWN_VALUE)
    if not record:
        return None
    ack = raw.get("ack") or None
    active = record.get("cleared") is None
    acknowledged = bool(ack and ack.get("occurrence") == record.get("first_seen"))
    source = record.get("source")
    return {"name": fault_id, "id": fault_id, "source": source,
            "node": source if fault_id.startswith("node.") else None,
            "check": record.get("check"), "severity": record.get("severity"), "delta": record.get("delta") or 0,
            "message": record.get("message"), "count": record.get("count"),
            "first_seen": record.get("first_seen"), "last_seen": record.get("last_seen"),
            "cleared": record.get("cleared"), "active": active, "acknowledged": acknowledged,
            "acknowledged_at": ack.get("time") if acknowledged else None,
            "counts": active and not acknowledged}


def fault_views(snapshot: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every fault of a watched snapshot, active ones first, then by last seen (newest first)."""
    views = [view for fault_id, raw in snapshot.items() if (view := fault_view(fault_id, raw))]
    return sorted(views, key=lambda view: (not view["active"], -(view["last_seen"] or 0), view["id"]))


def health(faults: Iterable[dict[str, Any]], node: str | None = None) -> int:
    """100 minus the deltas of the active, unacknowledged faults (of `node` alone when given), at least 0."""
    taken = sum(fault["delta"] for fault in faults if fault["counts"] and (node is None or fault["node"] == node))
    return max(0, 100 - taken)
