"""The storage pools' size, used and free bytes, and each storage backend's own health (Ceph's), asked of the
storage (through a node agent) every interval on a thread of its own, so a scrape serves the last answer and
never waits for storage."""
import logging
import threading
from typing import Any

log = logging.getLogger(__name__)


class PoolUsagePoller:
    def __init__(self, storage: Any, interval: float):
        self._storage = storage
        self._interval = interval
        self._stopping = threading.Event()
        self.latest: dict[str, dict[str, int]] = {}
        self.backends: dict[str, dict[str, Any]] = {}
        """Storage backend → its own judgement (``delta``, ``message``), as last asked."""

    def start(self) -> None:
        threading.Thread(target=self._loop, name="pool-usage", daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()

    def poll(self) -> None:
        self.latest = {row["name"]: {"size_bytes": row["capacity_bytes"], "used_bytes": row["used_bytes"],
                                     "free_bytes": row["free_bytes"]} for row in self._storage.status()}
        self.backends = self._storage._backend_health()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self.poll()
            except Exception as error:
                log.debug("storage pool usage not read: %s", error)
            self._stopping.wait(self._interval)
