"""The leader's watch over node keepalives.

A node in ``run`` whose keepalive is older than `fence_intervals` of its own keepalive interval is marked
``dead``. The write checks the leader's election node, so only the current leader can make it.
"""
import logging
import time

from pvc import schema
from pvc.cache import OWN_VALUE, ClusterCache
from pvc.errors import PVCError
from pvc.store import Store

log = logging.getLogger(__name__)


class NodeMonitor:
    def __init__(self, store: Store, cache: ClusterCache, fence_intervals: int):
        self._store = store
        self._cache = cache
        self._fence_intervals = fence_intervals

    def stale_nodes(self, now: float) -> list[str]:
        return [name for name, raw in self._cache.nodes.snapshot().items() if self._is_stale(raw, now)]

    def _is_stale(self, raw: dict, now: float) -> bool:
        if raw.get("daemon_state") != "run":
            return False
        interval = (raw.get(OWN_VALUE) or {}).get("keepalive_interval", 5)
        beat = (raw.get("keepalive") or {}).get("time", 0)
        return now - beat > interval * self._fence_intervals

    def check(self, leader_node: str) -> None:
        for name in self.stale_nodes(time.time()):
            # Each key of a node reaches the cache through its own watch, so a node that has just started may
            # show "run" before its new keepalive: confirm against ZooKeeper before acting.
            self._cache.nodes.refresh(name)
            if not self._is_stale(self._cache.nodes.get(name) or {}, time.time()):
                continue
            try:
                self._store.transaction(leader_node) \
                    .set(schema.node_key(name, "daemon_state"), "dead") \
                    .commit()
            except PVCError as error:
                log.warning("could not mark node %s dead: %s", name, error)
                continue
            self._cache.nodes.refresh(name)
            log.warning("node %s missed %d keepalives: marked dead", name, self._fence_intervals)
