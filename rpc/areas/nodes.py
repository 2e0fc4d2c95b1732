"""Remote object `nodes`: what the cluster's nodes are and how they are doing, from the cache."""
from __future__ import annotations

from typing import Any

import Pyro5.server

from pvc import schema
from pvc.errors import NotFound
from pvc.rpc import tasks
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

    def flush(self, name: str) -> dict[str, Any]:
        """Start moving every running VM off the node (domain state flushing → flushed); returns the task,
        which the leader carries out and `task` reports on."""
        self.info(name)
        return tasks.create_task(self._context, "flush", name)

    def ready(self, name: str) -> dict[str, Any]:
        """Return the node to service (unflushing → ready): VMs migrated away come back and VMs waiting
        for it to autostart start; returns the task."""
        self.info(name)
        return tasks.create_task(self._context, "ready", name)

    def task(self, task_id: str) -> dict[str, Any]:
        """A flush or ready task: its state (pending, running, done), progress and outcome."""
        return tasks.get_task(self._context, schema.check_name("task", task_id))

    def tasks(self) -> list[dict[str, Any]]:
        return [{"name": task["id"], **task} for task in tasks.list_tasks(self._context)]
