"""The node's health checks: run on the node's own health interval, off the keepalive path, their outcomes
kept as the node's faults (`pvc.health.faults`).

Checks get a `NodeContext`: what this daemon already knows (figures, when libvirt last answered) and a few
bounded probes (a ZooKeeper round trip, the storage backend's judgement, the leader's version)."""
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from kazoo.exceptions import KazooException

from pvc import schema
from pvc.health import libvirt_lost
from pvc.health.faults import FaultRaiser
from pvc.health.rounds import CheckedRounds
from pvc.health.runner import CheckRunner
from pvc.hookspecs import HealthCheck, StorageBackend
from pvc.store import Store, Transaction

NODE_CHECKS = "pvc_node_health_checks"


@dataclass
class NodeContext:
    """What one run of a node check is given (`pvc.hookspecs.NodeHealthContext`)."""

    name: str
    settings: Mapping[str, Any]
    deadline: float
    _store: Store
    _figures: Callable[[], Mapping[str, Any]]
    _libvirt_lost_s: Callable[[], float | None]
    _backend: StorageBackend
    _cluster_config: Callable[[], dict[str, Any]]
    _leader_version: Callable[[], str | None]

    def deadline_left(self) -> float:
        return max(self.deadline - time.monotonic(), 0.1)

    def libvirt_lost_s(self) -> float | None:
        return self._libvirt_lost_s()

    def libvirt_lost_settings(self) -> Mapping[str, Any]:
        return libvirt_lost.resolve(self._cluster_config(), self.name)

    def figures(self) -> Mapping[str, Any]:
        return self._figures()

    def zookeeper_latency_s(self) -> float:
        started = time.monotonic()
        self._store.zk.exists_async(schema.ROOT).get(timeout=self.deadline_left())
        return time.monotonic() - started

    def storage_health(self) -> tuple[int, str]:
        judge = getattr(self._backend, "health", None)
        if judge is None:
            return 0, "the storage backend does not judge its own health"
        return judge(self.deadline_left())

    def leader_version(self) -> str | None:
        return self._leader_version()


class LeaderVersion:
    """The PVC version of the leading coordinator, read again only when the coordinators' election changed (a
    watch on its contenders: a new leader is a new contender). Read every health round, it was 30 of an idle
    node's 75 ZooKeeper requests a minute."""

    def __init__(self, store: Store, name: str):
        self._store = store
        self._name = name
        self._contenders: tuple[str, ...] | None = None
        """The election's children as the watch last gave them; None until a watch runs."""
        self._known: tuple[tuple[str, ...], str] | None = None
        """The version read for those contenders (never "none known": a leader may enter the election before it
        records its version)."""
        self._lock = threading.Lock()

    def _on_contenders(self, children: list[str]) -> None:
        self._contenders = tuple(sorted(children))

    def __call__(self) -> str | None:
        with self._lock:
            if self._contenders is None:
                try:
                    self._store.zk.ChildrenWatch(schema.ELECTION, self._on_contenders)
                except KazooException:
                    pass
            contenders, known = self._contenders, self._known
            if contenders is not None and known is not None and known[0] == contenders:
                return known[1]
            version = self._read()
            if contenders is not None and version is not None:
                self._known = (contenders, version)
            return version

    def _read(self) -> str | None:
        try:
            contenders = self._store.lock(schema.ELECTION, self._name).contenders()
        except KazooException:
            return None
        if not contenders:
            return None
        record = self._store.read(schema.live_coordinator(contenders[0])) or {}
        return record.get("version")


class NodeHealth(CheckedRounds):
    """Runs the node checks every `interval()` seconds and records each outcome as this node's fault."""

    def __init__(self, name: str, settings: Mapping[str, Any], store: Store, checks: Mapping[str, HealthCheck],
                 transaction: Callable[[], Transaction], maintenance: Callable[[], bool],
                 figures: Callable[[], Mapping[str, Any]], libvirt_lost_s: Callable[[], float | None],
                 backend: StorageBackend, cluster_config: Callable[[], dict[str, Any]],
                 interval: Callable[[], float], connected: Callable[[], bool],
                 after_round: Callable[[], None] = lambda: None):
        for check in checks:
            schema.check_check_name(check)
        self.raiser = FaultRaiser(store, name, transaction, maintenance)
        self._connected = connected
        leader_version = LeaderVersion(store, name)
        self.runner = CheckRunner(
            checks, lambda deadline: NodeContext(name, settings, deadline, store, figures, libvirt_lost_s, backend,
                                                 cluster_config, leader_version),
            self._record, interval, active=connected, thread_prefix="health",
            after_round=lambda: (self.raiser.prune(), after_round()))
