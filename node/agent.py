"""The node's remote object: what coordinators ask this node to do.

It is served only to connections presenting the cluster secret (`pvc.handshake`): the cluster's coordinators,
and its other nodes, which hold the same secret and ask only `zookeeper_reachable` (`pvc.node.self_fence`).
"""
from collections import deque
from pathlib import Path
from typing import Any, Callable

import Pyro5.server

from pvc import schema
from pvc.errors import InvalidInput, Unavailable
from pvc.node import daemon_log
from pvc.node import live_change
from pvc.node.guest_snapshots import GuestSnapshots
from pvc.node.host_xml import HostPaths
from pvc.node.hypervisor import Hypervisor
from pvc.node.reconcile import Reconciler

AGENT_OBJECT_ID = "pvc.node"
MAX_CONSOLE_LINES = 10000


@Pyro5.server.expose
@Pyro5.server.behavior(instance_mode="single")
class NodeAgent:
    def __init__(self, node_name: str, hypervisor: Hypervisor, reconciler: Reconciler, paths: HostPaths,
                 log_file: str | None = None,
                 zookeeper_probe: Callable[[float], tuple[bool, str]] | None = None,
                 guest_snapshots: GuestSnapshots | None = None):
        self._node_name = node_name
        self._guest_snapshots = guest_snapshots
        self._zookeeper_probe = zookeeper_probe
        self._log_file = log_file
        self._paths = paths
        self._hypervisor = hypervisor
        self._reconciler = reconciler

    def ping(self) -> str:
        return self._node_name

    def zookeeper_reachable(self, timeout: float) -> dict[str, Any]:
        """Whether this node reaches ZooKeeper now, asked by a peer that cannot (`pvc.node.self_fence`)
        before it stops its VMs: it presents the cluster secret like a coordinator."""
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not 0 < timeout <= 30:
            raise InvalidInput(f"timeout must be a number of seconds from 0 to 30, not {timeout!r}")
        if self._zookeeper_probe is None:
            return {"node": self._node_name, "reachable": False, "detail": "this node does not probe ZooKeeper"}
        reachable, detail = self._zookeeper_probe(float(timeout))
        return {"node": self._node_name, "reachable": reachable, "detail": detail}

    def domains(self) -> list[dict[str, Any]]:
        """The domains libvirt has on this node, running or not."""
        return [vars(domain) for domain in self._hypervisor.domains()]

    def converge(self, vm: str) -> dict[str, Any]:
        """Carry out now what ZooKeeper wants for `vm` on this node; returns the VM's status from here."""
        return self._reconciler.converge(vm)

    def remove(self, vm: str) -> None:
        """Take a VM the cluster no longer records off this node."""
        self._reconciler.remove(vm)

    def vm_snapshot(self, vm: str, volumes: list[str], snapshot: str, max_pause_s: float | None,
                    pause: bool) -> dict[str, Any]:
        """Snapshot every volume of `vm` at one moment, the guest paused around it if it runs here and `pause`
        (`pvc.node.guest_snapshots`)."""
        if self._guest_snapshots is None:
            raise Unavailable(f"node {self._node_name} takes no VM snapshots")
        if not isinstance(volumes, list) or not volumes:
            raise InvalidInput("a VM snapshot needs the list of the VM's volumes")
        with self._reconciler.settled_here(schema.check_name("VM", vm)):
            return self._guest_snapshots.take(vm, volumes, snapshot, max_pause_s, pause is True)

    def live_change(self, vm: str, change: dict[str, Any]) -> None:
        """Apply an already recorded edit of `vm` to its running guest here (`pvc.node.live_change`); a device
        is made concrete for this host first (a NIC on a PVC network joins its bridge, made here if need be)."""
        if isinstance(change, dict) and change.get("kind") in ("attach", "detach"):
            change = {**change, "value": self._reconciler.device_for_host(str(change.get("value")))}
        live_change.apply(self._hypervisor, schema.check_name("VM", vm), change)

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

    def console_log_file(self, vm: str) -> dict[str, Any]:
        """Where this node writes the VM's serial console log, and its size here (None: no file yet)."""
        path = self._paths.console_log(schema.check_name("VM", vm))
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = None
        return {"path": str(path), "size_bytes": size}

    def daemon_log(self, lines: int, offset: int | None = None) -> dict[str, Any]:
        """The end of this daemon's own log file, or what was written to it after `offset`
        (`pvc.node.daemon_log`)."""
        if not self._log_file:
            raise Unavailable(f"node {self._node_name} logs to its standard error (the journal under systemd), "
                              "not to a file: set log_file in its pvcnoded.yaml for pvc node log")
        return daemon_log.read(Path(self._log_file), lines, offset)
