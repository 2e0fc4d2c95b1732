"""The node's remote object: what coordinators ask this node to do.

It is served only to connections presenting the cluster secret (`pvc.handshake`).
"""
from collections import deque
from typing import Any

import Pyro5.server

from pvc import schema
from pvc.errors import InvalidInput
from pvc.node.host_xml import HostPaths
from pvc.node.hypervisor import Hypervisor
from pvc.node.reconcile import Reconciler

AGENT_OBJECT_ID = "pvc.node"
MAX_CONSOLE_LINES = 10000


@Pyro5.server.expose
@Pyro5.server.behavior(instance_mode="single")
class NodeAgent:
    def __init__(self, node_name: str, hypervisor: Hypervisor, reconciler: Reconciler, paths: HostPaths):
        self._node_name = node_name
        self._paths = paths
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

    def console(self, vm: str, lines: int) -> list[str]:
        """The last `lines` lines of the VM's serial console log on this node (empty if it has none here)."""
        path = self._paths.console_log(schema.check_name("VM", vm))
        if not isinstance(lines, int) or isinstance(lines, bool) or not 0 < lines <= MAX_CONSOLE_LINES:
            raise InvalidInput(f"lines must be a whole number from 1 to {MAX_CONSOLE_LINES}, not {lines!r}")
        try:
            with open(path, "rb") as log:
                return [line.decode(errors="replace").rstrip("\r\n") for line in deque(log, maxlen=lines)]
        except FileNotFoundError:
            return []
