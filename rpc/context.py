"""What a coordinator's remote objects share: the store, the cache, leadership, plugins, node agents."""
import threading
from dataclasses import dataclass, field
from typing import Any

from pvc import models, schema
from pvc.cache import OWN_VALUE, ClusterCache, Views
from pvc.health.faults import fault_views, health
from pvc.hookspecs import MigrationSelector
from pvc.plugin_manager import Plugins
from pvc.rpc import removal
from pvc.rpc.agents import NodeAgents
from pvc.rpc.decided_load import FIGURES, DecidedLoad
from pvc.rpc.leadership import Leadership
from pvc.store import Store


SELECTORS = "pvc_migration_selectors"


class NodeViews:
    """Node views rebuilt only for the nodes that changed since the last call (a keepalive changes one every
    interval), and all of them when the faults changed, since a node's health comes from them: every define
    chooses its node from the views of every node, and building 96 of them twice was a define's largest cost
    of its own at vSphere's size."""

    def __init__(self, cache: ClusterCache):
        self._cache = cache
        self._lock = threading.Lock()
        self._faults_seen = -1
        self._faults: list[dict[str, Any]] = []
        self._views = Views(cache.nodes, self._build)

    def current(self) -> list[dict[str, Any]]:
        """Every node's view, by name; the caller must not change the list or the views."""
        with self._lock:
            return self._up_to_date().current()

    def get(self, name: str) -> dict[str, Any] | None:
        """One node's view, or None; the caller must not change it."""
        with self._lock:
            return self._up_to_date().get(name)

    def _up_to_date(self) -> Views:
        sequence, changed = self._cache.faults.changes(self._faults_seen)
        if changed != []:
            self._faults = fault_views(self._cache.faults.snapshot())
            self._views = Views(self._cache.nodes, self._build)
        self._faults_seen = sequence
        return self._views

    def _build(self, name: str, raw: dict[str, Any]) -> dict[str, Any] | None:
        return models.node_view(name, raw, health=health(self._faults, name)) \
            if raw.get(OWN_VALUE) is not None else None


@dataclass
class CoordinatorContext:
    name: str
    settings: dict[str, Any]
    store: Store
    cache: ClusterCache
    plugins: Plugins
    agents: NodeAgents
    leadership: Leadership
    decided_load: DecidedLoad = field(init=False)
    _node_views: NodeViews = field(init=False)

    def __post_init__(self) -> None:
        self.decided_load = DecidedLoad(self.cache.vms)
        self._node_views = NodeViews(self.cache)

    def node_views(self) -> list[dict[str, Any]]:
        """Every node's view, by name; copies, which the caller may change."""
        return [dict(view) for view in self._node_views.current()]

    def node_view(self, name: str) -> dict[str, Any] | None:
        """One node's view, a copy; a poke of a node during a burst of defines asks for it once per define."""
        view = self._node_views.get(name)
        return dict(view) if view is not None else None

    def fault_views(self) -> list[dict[str, Any]]:
        """Every fault in the cache (`pvc.health.faults.fault_view`)."""
        return fault_views(self.cache.faults.snapshot())

    def volume_users(self, pool: str, volume: str, caught_up: bool = False) -> list[str]:
        """The VMs whose definition uses volume `pool/volume` (their record's ``volumes`` list), once the cache
        shows every VM recorded before the call (unless the caller has just caught up: `caught_up`). A VM that
        another coordinator has just defined is listed here up to `pvc.cache.VMS_RELIST_GAP_S` later, and its
        volume must not be removed meanwhile."""
        if not caught_up:
            self.cache.catch_up()
        return removal.volume_users(self.cache.vms, f"{pool}/{volume}")

    def placement_views(self) -> list[dict[str, Any]]:
        """Node views for choosing a VM's node: the figures a node reports, corrected by what the cluster has
        already decided. Keepalives lag a placement by up to an interval, so without this a burst of
        defines (or a flush) would all see the same node as emptiest."""
        nodes = self.node_views()
        by_node = self.decided_load.by_node()
        overcommit = float(self.cache.config.get().get("memory_overcommit",
                                                       schema.DEFAULT_CLUSTER_CONFIG["memory_overcommit"]))
        for node in nodes:
            decided = by_node.get(node["name"]) or dict.fromkeys(FIGURES, 0)
            node["memory_overcommit"] = overcommit
            node["memory_limit_mib"] = int(node["memory_total_mib"] * overcommit) \
                if node.get("memory_total_mib") else None
            unreported_memory = decided["memory_allocated_mib"] - (node["memory_allocated_mib"] or 0)
            unreported_vcpus = decided["vcpus_allocated"] - (node["vcpus_allocated"] or 0)
            node.update(decided)
            node["memory_free_mib"] = (node["memory_free_mib"] or 0) - unreported_memory
            node["load"] = (node["load"] or 0) + unreported_vcpus
        return nodes

    def selector(self, spec: dict[str, Any]) -> MigrationSelector:
        """The migration selector a VM's definition names, else the cluster default."""
        name = spec.get("node_selector") or self.cache.config.get().get("default_selector", "mem")
        return self.plugins.get(SELECTORS, name)

    def live_coordinators(self) -> list[dict[str, Any]]:
        return [{"name": name, **(self.store.read(schema.live_coordinator(name)) or {})}
                for name in self.store.children(schema.LIVE_COORDINATORS)]
