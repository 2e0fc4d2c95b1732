"""Every task the cluster ran during a fault run, as last seen: the leader forgets finished tasks beyond its
newest hundred, and a run of ten minutes finishes many more (flushes, readies, recoveries), so a list read only
at the end would lose the recoveries and moves that the checker must find."""
from __future__ import annotations

import threading
from typing import Any, Callable

from pvc.errors import PVCError

POLL_S = 1.0


class TaskLog(threading.Thread):
    def __init__(self, connect: Callable[[], Any]):
        super().__init__(name="task-log", daemon=True)
        self._connect = connect
        self._seen: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def run(self) -> None:
        client = None
        while not self._stopping.is_set():
            try:
                client = client or self._connect()
                self.add(client.nodes.tasks())
            except PVCError:
                pass
            self._stopping.wait(POLL_S)
        if client is not None:
            client.close()

    def add(self, tasks: list[dict[str, Any]]) -> None:
        with self._lock:
            self._seen.update((task["id"], task) for task in tasks)

    def stop(self) -> list[dict[str, Any]]:
        """Stop polling; every task seen, each in its last state, oldest first."""
        self._stopping.set()
        self.join(10)
        with self._lock:
            return sorted(self._seen.values(), key=lambda task: task.get("created") or 0)
