"""The node's remote object: what coordinators ask this node to do.

It is served only to connections presenting the cluster secret (`pvc.handshake`).
"""
from typing import Any

import Pyro5.server

from pvc.node.hypervisor import Hypervisor

AGENT_OBJECT_ID = "pvc.node"


@Pyro5.server.expose
@Pyro5.server.behavior(instance_mode="single")
class NodeAgent:
    def __init__(self, node_name: str, hypervisor: Hypervisor):
        self._node_name = node_name
        self._hypervisor = hypervisor

    def ping(self) -> str:
        return self._node_name

    def domains(self) -> list[dict[str, Any]]:
        """The domains libvirt has on this node, running or not."""
        return [vars(domain) for domain in self._hypervisor.domains()]
