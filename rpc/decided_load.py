"""What the cluster has decided each node carries, kept current from the VM cache's change log.

Choosing a node corrects each node's reported figures by what is already placed on it (`CoordinatorContext.
placement_views`). Summing every VM for that on each define cost a copy of the whole collection: at 10,000 VMs
it was the largest part of a define's CPU, and defines from 8 clients ran at 11 a second. The sums here change
only by the VMs that changed since they were last read.
"""
import threading
from typing import Any

from pvc import schema
from pvc.cache import OWN_VALUE, WatchedCollection

FIGURES = ("memory_allocated_mib", "memory_provisioned_mib", "vcpus_allocated", "vms_running")


def _share(raw: dict[str, Any]) -> tuple[str, tuple[int, ...]] | None:
    """The node a VM's placement names and what the VM adds to it there, in `FIGURES` order."""
    spec, node = raw.get(OWN_VALUE), (raw.get("placement") or {}).get("node")
    if not spec or node is None:
        return None
    memory = spec["memory_mib"]
    if raw.get("state") in schema.RUNNING_STATES:
        return node, (memory, memory, spec["vcpus"], 1)
    return node, (0, memory, 0, 0)


class DecidedLoad:
    def __init__(self, vms: WatchedCollection):
        self._vms = vms
        self._lock = threading.Lock()
        self._seen = -1
        self._shares: dict[str, tuple[str, tuple[int, ...]]] = {}
        self._totals: dict[str, list[int]] = {}

    def by_node(self) -> dict[str, dict[str, int]]:
        """Each node's sums of `FIGURES` over the VMs placed on it (nodes with none left out)."""
        with self._lock:
            sequence, changed = self._vms.changes(self._seen)
            if changed is None:
                self._shares.clear()
                self._totals.clear()
                changed = self._vms.names()
            for name in changed:
                self._settle(name)
            self._seen = sequence
            return {node: dict(zip(FIGURES, totals)) for node, totals in self._totals.items()}

    def _settle(self, name: str) -> None:
        """Take the VM's old share off its old node and add its current one (the caller holds the lock). A
        change made after `changes` answered is read here already and read again next time: same result."""
        old = self._shares.pop(name, None)
        if old is not None:
            self._add(*old, sign=-1)
        raw = self._vms.get(name)
        share = _share(raw) if raw is not None else None
        if share is not None:
            self._shares[name] = share
            self._add(*share, sign=1)

    def _add(self, node: str, figures: tuple[int, ...], sign: int) -> None:
        totals = self._totals.setdefault(node, [0] * len(FIGURES))
        for index, value in enumerate(figures):
            totals[index] += sign * value
        if not any(totals):
            del self._totals[node]
