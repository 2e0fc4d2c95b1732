"""The node's remote object: what coordinators ask this node to do.

It is served only to connections presenting the cluster secret (`pvc.handshake`).
"""
from typing import Any

import Pyro5.server

from pvc.node.hypervisor import Hypervisor
from pvc.node.reconcile import Reconciler

AGENT_OBJECT_ID = "pvc.node"


@Pyro5.server.expose
@Pyro5.server.behavior(instance_mode="single")
class NodeAgent:
    def __init__(self, node_name: str, hypervisor: Hypervisor, reconciler: Reconciler):
        self._node_name = node_name
        self._hypervisor = hypervisor
        self._reconciler = reconciler

    def ping(self) -> str:
        return self._node_name

    def domains(self) -> list[dict[str, Any]]:
        """The domains libvirt has on this node, running or not."""
        return [vars(domain) for domain in self._hypervisor.domains()]

    def converge(self, vm: str) -> dict[str, Any]:
        """Carry out now what ZooKeeper wants for `vm` on this node; returns the VM's status from here."""
        return self._reconciler.converge(vm)

    def remove(self, vm: str) -> None:
        """Take a VM the cluster no longer records off this node."""
        self._reconciler.remove(vm)
