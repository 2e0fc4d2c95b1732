"""Remote object `nodes`: what the cluster's nodes are and how they are doing, from the cache."""
from typing import Any

import Pyro5.server

from pvc import schema
from pvc.errors import NotFound
from pvc.rpc.context import CoordinatorContext


@Pyro5.server.expose
@Pyro5.server.behavior(instance_mode="single")
class NodesArea:
    def __init__(self, context: CoordinatorContext):
        self._context = context

    def list(self) -> list[dict[str, Any]]:
        """Every node, sorted by name."""
        return self._context.node_views()

    def info(self, name: str) -> dict[str, Any]:
        schema.check_name("node", name)
        node = self._context.node_view(name)
        if node is None:
            raise NotFound(f"no node named '{name}'")
        return node
