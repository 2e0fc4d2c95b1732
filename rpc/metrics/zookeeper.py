"""ZooKeeper's own figures, from ``mntr`` asked of each server every interval on a thread of its own, so a
scrape only reads what the last round found (and a server that does not answer never slows a scrape)."""
import threading
import time
from typing import Any

from pvc.health import zookeeper_words

MNTR_TIMEOUT_S = 2.0


class MntrPoller:
    def __init__(self, hosts: str, interval: float):
        self._servers = zookeeper_words.servers(hosts)
        self._interval = interval
        self._stopping = threading.Event()
        self.latest: dict[str, dict[str, Any]] = {}
        """Server address → {"up": bool, "mntr": {key: value}}, as the last round found."""

    def start(self) -> None:
        threading.Thread(target=self._loop, name="zookeeper-mntr", daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()

    def poll(self) -> None:
        found = {}
        for host, port in self._servers:
            answer = zookeeper_words.ask(host, port, "mntr", time.monotonic() + MNTR_TIMEOUT_S)
            found[f"{host}:{port}"] = {"up": answer is not None and "zk_version" in answer,
                                       "mntr": zookeeper_words.mntr(answer or "")}
        self.latest = found

    def _loop(self) -> None:
        while True:
            self.poll()
            if self._stopping.wait(self._interval):
                return
