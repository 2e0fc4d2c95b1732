"""What this node's VMs need of the client networks, made and kept so.

A network's devices exist on a node while a VM held here (placed here, or reported here) names it, so they are
there before the VM is defined or arrives by live migration (the target is placed before the source acts), and
go once the last such VM has left. Each pass also removes devices of PVC's (by their prefix) that no VM here
needs any longer: what a crash or a removal while the node was down left. The node reports the networks it has
made (`schema.node_key(NODE, "networks")`), and a migration source waits for its target's report.
"""
import logging
import threading
from typing import Any, Iterable, Mapping

from pvc import schema
from pvc.cache import OWN_VALUE, WatchedCollection
from pvc.errors import OperationFailed, PVCError
from pvc.node.network import devices
from pvc.node.ownership import NodeOwnership
from pvc.store import Store

log = logging.getLogger(__name__)


class NodeNetworks:
    def __init__(self, node: str, store: Store, ownership: NodeOwnership, bridge_dev: str | None,
                 cluster_dev: str | None):
        self._node = node
        self._store = store
        self._ownership = ownership
        self._bridge_dev = bridge_dev
        self._cluster_dev = cluster_dev
        self._lock = threading.Lock()
        self._reported: list[int] | None = None
        self.networks = WatchedCollection(store, schema.NETWORKS, lambda name: schema.network(int(name)))
        self.cluster_address: str | None = None

    def start(self) -> None:
        """Watch the network records; find this node's VXLAN address (published in its record)."""
        if self._cluster_dev:
            self.cluster_address = devices.first_ipv4(self._cluster_dev)
        self.networks.start()

    def record(self, vni: int) -> dict[str, Any] | None:
        return (self.networks.get(str(vni)) or {}).get(OWN_VALUE)

    def ensure(self, vnis: Iterable[int]) -> None:
        """Make the devices of networks `vnis` here now (before a VM using them is defined); `OperationFailed`
        saying why one cannot be made."""
        wanted = sorted(set(vnis))
        if not wanted:
            return
        with self._lock:
            existing = devices.links()
            for vni in wanted:
                self._ensure_one(vni, existing)
            self._report(devices.own_networks(devices.links()))

    def converge(self, vms: Mapping[str, dict[str, Any]]) -> list[str]:
        """Make what the VMs held here need, remove PVC's devices nobody here needs; returns what changed."""
        needed = self.needed(vms)
        changed = []
        with self._lock:
            existing = devices.links()
            for vni in sorted(needed):
                try:
                    changed += self._ensure_one(vni, existing)
                except OperationFailed as error:
                    log.warning("network %s: %s", vni, error)
            for vni in sorted(devices.own_networks(existing) - needed):
                changed += devices.remove(vni, existing)
            self._report(devices.own_networks(devices.links()))
        for change in changed:
            log.info("networks: %s", change)
        return changed

    def needed(self, vms: Mapping[str, dict[str, Any]]) -> set[int]:
        """The networks named by the VMs placed or reported on this node (a VM being removed keeps its own
        until its domain is gone)."""
        needed = set()
        for raw in vms.values():
            spec = raw.get(OWN_VALUE) or {}
            held = (raw.get("placement") or {}).get("node") == self._node or \
                ((raw.get("status") or {}).get("node") == self._node and not (raw.get("status") or {}).get("removed"))
            if held:
                needed.update(spec.get("networks") or [])
        return needed

    def _ensure_one(self, vni: int, existing: dict[str, devices.Link]) -> list[str]:
        record = self.record(vni)
        if record is None:
            raise OperationFailed(f"network {vni} has no record (removed while a VM here names it?)")
        if record["type"] == "bridged" and not self._bridge_dev:
            raise OperationFailed(f"node {self._node} has no bridge_dev for bridged network {vni}'s VLAN")
        if record["type"] == "managed" and not self.cluster_address:
            raise OperationFailed(f"node {self._node} has no cluster_dev for managed network {vni}'s VXLAN")
        peers = self._peers() if record["type"] == "managed" else []
        return devices.ensure(vni, record["type"], record["mtu"], self._bridge_dev, self.cluster_address, peers,
                              existing)

    def _peers(self) -> list[str]:
        """Every other node's VXLAN address, from the node records."""
        addresses = []
        for name in self._store.children(schema.NODES):
            if name != self._node:
                address = (self._store.read(schema.node(name)) or {}).get("cluster_address")
                if address:
                    addresses.append(address)
        return addresses

    def _report(self, made: set[int]) -> None:
        report = sorted(made)
        if report != self._reported:
            try:
                self._ownership.write(schema.node_key(self._node, "networks"), {"made": report})
            except PVCError as error:  # not registered yet (the first pass at start): the next pass reports
                log.info("networks made here not reported yet: %s", error)
                return
            self._reported = report


def made_on(store: Store, node: str) -> set[int]:
    """The networks `node` reports it has made."""
    return set((store.read(schema.node_key(node, "networks")) or {}).get("made") or [])
