"""What each pool can still hold, as the node last heard it.

Asking costs: on Ceph, ``ceph df`` is a Python program that takes a third of a CPU-second, on a node busy
receiving and converting an upload. An upload that needs a small part of what a pool had free a few minutes
ago need not ask again; one that needs more than half of the remembered figure asks afresh, so a stale figure
only ever lets through what fits with room to spare, and a refusal always rests on a fresh one.
"""
import threading
import time

from pvc.hookspecs import StorageBackend

TRUSTED_S = 300.0
MARGIN = 2


class PoolRoom:
    def __init__(self, backend: StorageBackend):
        self._backend = backend
        self._lock = threading.Lock()
        self._known: dict[str, tuple[float, int]] = {}

    def fits(self, pool: str, needed_bytes: int) -> tuple[bool, int]:
        """Whether `needed_bytes` more fit in `pool`, and the free bytes that answer rests on. What fits is
        taken off the remembered figure, so uploads in a row soon ask again; what an upload frees (replacing a
        larger volume) is not added to it."""
        needed_bytes = max(needed_bytes, 0)
        now = time.monotonic()
        with self._lock:
            heard_at, free = self._known.get(pool, (float("-inf"), 0))
            if now - heard_at <= TRUSTED_S and needed_bytes * MARGIN <= free:
                self._known[pool] = (heard_at, free - needed_bytes)
                return True, free
        free = self._backend.pool_usage(pool)["free_bytes"]
        fits = needed_bytes <= free
        with self._lock:
            self._known[pool] = (now, free - needed_bytes if fits else free)
        return fits, free
