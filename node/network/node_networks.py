"""What this node's VMs need of the client networks, made and kept so.

A network's devices exist on a node while a VM held here (placed here, or reported here) names it, so they are
there before the VM is defined or arrives by live migration (the target is placed before the source acts), and
go once the last such VM has left. Each pass also removes devices of PVC's (by their prefix) that no VM here
needs any longer: what a crash or a removal while the node was down left. The node reports the networks it has
made (`schema.node_key(NODE, "networks")`), and a migration source waits for its target's report.
"""
import logging
import threading
from typing import Any, Callable, Iterable, Mapping

from pvc import node_index, schema
from pvc.cache import OWN_VALUE, WatchedCollection
from pvc.errors import OperationFailed, PVCError
from pvc.node.network import devices
from pvc.node.network.router import RouterServices
from pvc.node.ownership import NodeOwnership
from pvc.store import Store

log = logging.getLogger(__name__)


class NodeNetworks:
    def __init__(self, node: str, store: Store, ownership: NodeOwnership, bridge_dev: str | None,
                 cluster_dev: str | None, router: RouterServices | None = None,
                 may_route: Callable[[], bool] = lambda: True):
        self._node = node
        self._may_route = may_route
        """False once this node has fenced itself: then it serves nothing, whatever the router record says."""
        self.router = router
        """This node's router services, when it may route (``router: true``)."""
        self._store = store
        self._ownership = ownership
        self._bridge_dev = bridge_dev
        self._cluster_dev = cluster_dev
        self._lock = threading.Lock()
        self._reported: dict[str, Any] | None = None
        self._kept_in_use: set[int] = set()
        """Networks no VM here needs whose bridge still has a port PVC did not make (logged once)."""
        self._leases_lock = threading.Lock()
        self._leases_written: dict[int, dict[str, Any]] = {}
        if router is not None:
            router.hear_leases(self._lease_changed)
        self.networks = WatchedCollection(store, schema.NETWORKS, lambda name: schema.network(int(name)),
                                          schema.NETWORK_KEYS)
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
        """Make what the VMs held here need (and, on the router, every managed network with its services),
        remove PVC's devices nobody here needs; returns what changed."""
        records = self.records()
        routing = self.router is not None and self._may_route() and \
            (self._store.read(schema.NETWORK_ROUTER) or {}).get("node") == self._node
        needed = self.needed(vms)
        if routing:
            needed |= {vni for vni, record in records.items() if record["type"] == "managed"}
        changed = []
        with self._lock:
            if self.router is not None and not routing:
                changed += self.router.stop(records)
            existing = devices.links()
            for vni in sorted(needed):
                try:
                    changed += self._ensure_one(vni, existing)
                except OperationFailed as error:
                    log.warning("network %s: %s", vni, error)
            changed += self._remove_unneeded(devices.own_networks(existing) - needed, existing, vms)
            if routing:
                try:
                    changed += self.router.start(records, _hosts(vms), self._stored_leases())
                except OperationFailed as error:
                    log.warning("router services: %s", error)
                self._write_leases(self.router.leases())
            self._report(devices.own_networks(devices.links()))
        for change in changed:
            log.info("networks: %s", change)
        return changed

    def stop_routing(self) -> None:
        """Stop the router services (the daemon is stopping) and say so, so the leader may move them."""
        if self.router is None:
            return
        with self._lock:
            self.router.stop(self.records())
            self._report(devices.own_networks(devices.links()))

    def stop_routing_cut_off(self, wait_s: float = 5.0) -> None:
        """Stop the router services at once, without ZooKeeper (this node has fenced itself: it is cut off, and
        the next router starts once the leader has fenced it), so that nothing of it answers beside its
        successor even where guests still reach it. The next pass that reaches ZooKeeper reports it."""
        if self.router is None:
            return
        locked = self._lock.acquire(timeout=wait_s)
        try:
            self.router.stop(self.records())
        finally:
            if locked:
                self._lock.release()

    def records(self) -> dict[int, dict[str, Any]]:
        return {int(name): raw[OWN_VALUE] for name, raw in self.networks.snapshot().items() if raw.get(OWN_VALUE)}

    def _stored_leases(self) -> dict[int, dict[str, Any]]:
        return {int(name): raw.get("leases") or {} for name, raw in self.networks.snapshot().items()}

    def _write_leases(self, leases: Mapping[int, dict[str, Any]]) -> None:
        """Copy dnsmasq's leases into ZooKeeper when they changed, so that the next router starts with them."""
        with self._leases_lock:
            for vni, current in leases.items():
                self._record_leases(vni, current)

    def _lease_changed(self, vni: int, action: str, mac: str, lease: dict[str, Any] | None) -> None:
        """One lease as dnsmasq's lease script reported it, recorded at once (`lease_events`)."""
        with self._leases_lock:
            current = dict(self._leases_written[vni] if vni in self._leases_written
                           else self._stored_leases().get(vni) or {})
            if lease is None:
                current.pop(mac, None)
            else:
                current[mac] = lease
            self._record_leases(vni, current)
        log.debug("network %s: lease %s for %s recorded", vni, action, mac)

    def _record_leases(self, vni: int, current: dict[str, Any]) -> None:
        if current != self._leases_written.get(vni) and self.record(vni) is not None:
            try:
                self._ownership.write(schema.network_leases(vni), current)
                self._leases_written[vni] = current
            except PVCError as error:
                log.warning("leases of network %s not recorded: %s", vni, error)

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

    def _remove_unneeded(self, vnis: set[int], existing: dict[str, devices.Link],
                         vms: Mapping[str, dict[str, Any]]) -> list[str]:
        """Remove the devices of networks no VM here needs, unless that changed under this pass.

        A bridge with a port that is not PVC's own (a guest's tap, an incoming migration's) stays: a later pass
        decides again. A migration source moves its VM here once this node's report names the VM's networks,
        and this pass's view of the VMs may predate that VM's placement. So the report is withdrawn first, and
        what is placed here read again after that write: the placement came before the source read the old
        report, which came before the withdrawal, so this read sees it."""
        in_use = {vni for vni in vnis if devices.foreign_ports(vni, existing)}
        for vni in sorted(in_use - self._kept_in_use):
            log.info("network %s: devices kept, %s still on its bridge", vni,
                     ", ".join(devices.foreign_ports(vni, existing)))
        self._kept_in_use = in_use
        removable = vnis - in_use
        if not removable:
            return []
        self._report(devices.own_networks(existing) - removable)
        changed = []
        for vni in sorted(removable - self._needed_now(vms)):
            changed += devices.remove(vni, existing)
        return changed

    def _needed_now(self, vms: Mapping[str, dict[str, Any]]) -> set[int]:
        """The networks of the VMs placed here as ZooKeeper says now (the per-node index), or as `vms` says
        where there is no complete index."""
        if not node_index.complete(self._store):
            return self.needed(vms)
        needed = set()
        for name in self._store.children(schema.node_vms(self._node)):
            spec = self._store.read(schema.vm(name)) or {}
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
        report = {"made": sorted(made), "routing": bool(self.router and self.router.routing)}
        if report != self._reported:
            try:
                self._ownership.write(schema.node_key(self._node, "networks"), report)
            except PVCError as error:  # not registered yet (the first pass at start): the next pass reports
                log.info("networks made here not reported yet: %s", error)
                return
            self._reported = report


def _hosts(vms: Mapping[str, dict[str, Any]]) -> dict[int, dict[str, str]]:
    """Per network, its VMs' NIC MACs and the VMs' names: the names the network's DNS gives their leases."""
    hosts: dict[int, dict[str, str]] = {}
    for name, raw in vms.items():
        for nic in (raw.get(OWN_VALUE) or {}).get("nics") or []:
            if nic.get("type") == "network" and nic.get("mac") and str(nic.get("source")).isdigit():
                hosts.setdefault(int(nic["source"]), {})[nic["mac"].lower()] = name
    return hosts


def made_on(store: Store, node: str) -> set[int]:
    """The networks `node` reports it has made."""
    return set((store.read(schema.node_key(node, "networks")) or {}).get("made") or [])
