"""What a coordinator's remote objects share: the store, the cache, leadership, plugins, node agents."""
import time
from dataclasses import dataclass
from typing import Any

from pvc import models, schema
from pvc.cache import OWN_VALUE, ClusterCache
from pvc.plugin_manager import Plugins
from pvc.rpc.agents import NodeAgents
from pvc.rpc.leadership import Leadership
from pvc.store import Store


@dataclass
class CoordinatorContext:
    name: str
    settings: dict[str, Any]
    store: Store
    cache: ClusterCache
    plugins: Plugins
    agents: NodeAgents
    leadership: Leadership

    def node_views(self) -> list[dict[str, Any]]:
        now = time.time()
        return [models.node_view(name, raw, now) for name, raw in sorted(self.cache.nodes.snapshot().items())
                if raw.get(OWN_VALUE) is not None]

    def node_view(self, name: str) -> dict[str, Any] | None:
        raw = self.cache.nodes.get(name)
        return models.node_view(name, raw) if raw and raw.get(OWN_VALUE) is not None else None

    def volume_users(self, pool: str, volume: str) -> list[str]:
        """The VMs whose definition uses volume `pool/volume` (their record's ``volumes`` list)."""
        wanted = f"{pool}/{volume}"
        return sorted(name for name, raw in self.cache.vms.snapshot().items()
                      if wanted in ((raw.get(OWN_VALUE) or {}).get("volumes") or []))

    def live_coordinators(self) -> list[dict[str, Any]]:
        return [{"name": name, **(self.store.read(schema.live_coordinator(name)) or {})}
                for name in self.store.children(schema.LIVE_COORDINATORS)]
