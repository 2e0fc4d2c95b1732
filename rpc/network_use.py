"""Which VMs use which client networks, and a VM document's NICs resolved to the networks they name.

A NIC names a network by VNI or description (``<interface type='network'><source network='web'/>``); the stored
document names it by VNI, so a later change of description never moves a VM. Network changes and the VM
definitions that name networks take one lock (`schema.NETWORK_LOCK`), so no network is removed while a VM starts
to use it.
"""
import secrets
from contextlib import contextmanager
from typing import Any, Iterator

from lxml import etree

from pvc import domain_xml, network_records, schema
from pvc.errors import Busy
from pvc.store import Store

LOCK_TIMEOUT_S = 30


@contextmanager
def locked(store: Store, holder: str) -> Iterator[None]:
    lock = store.lock(schema.NETWORK_LOCK, holder)
    if not lock.acquire(timeout=LOCK_TIMEOUT_S):
        raise Busy("the networks are being changed by another request; try again")
    try:
        yield
    finally:
        lock.release()


def stored_networks(store: Store) -> dict[int, dict[str, Any]]:
    """Every network's record, read from ZooKeeper itself (under the lock, what is true now)."""
    records = {}
    for name in store.children(schema.NETWORKS):
        record = store.read(schema.network(int(name)))
        if record:
            records[int(name)] = record
    return records


def users(store: Store, vni: int) -> list[str]:
    """The VMs whose record names network `vni`, read from ZooKeeper itself."""
    return sorted(name for name in store.children(schema.VMS)
                  if vni in ((store.read(schema.vm(name)) or {}).get("networks") or []))


def names_networks(domain: domain_xml.Domain) -> bool:
    return any(nic["type"] == "network" for nic in domain.nics)


def random_mac() -> str:
    """A MAC in QEMU's locally administered prefix: fixed in the stored document, so a guest keeps its MAC, and
    with it its lease and its name in the network's DNS, on every node."""
    return "52:54:00:" + ":".join(f"{octet:02x}" for octet in secrets.token_bytes(3))


def resolve(domain: domain_xml.Domain, networks: dict[int, dict[str, Any]],
            allow_host_devices: bool) -> tuple[domain_xml.Domain, list[int]]:
    """The document with each network NIC naming its network's VNI (and a MAC, `random_mac`, where it had
    none), and the VNIs it uses; a NIC naming no network, or a description two networks could mean, is
    refused."""
    root = domain_xml.parse_root(domain.xml)
    used = []
    for interface in root.iterfind("devices/interface[@type='network']"):
        source = interface.find("source")
        vni = network_records.resolve(source.get("network"), networks)
        source.set("network", str(vni))
        used.append(vni)
        if interface.find("mac") is None:
            interface.insert(0, etree.Element("mac", address=random_mac()))
    if not used:
        return domain, []
    resolved = domain_xml.parse(etree.tostring(root, encoding="unicode"), default_uuid=domain.uuid,
                                allow_host_devices=allow_host_devices)
    return resolved, sorted(set(used))


def reserve(store: Store, holder: str, network: str, mac: str, hostname: str) -> dict[str, Any]:
    """A reservation for `mac` on `network` (VNI or description), at the lowest free address; the existing one
    if `mac` has one already (so a retried step reserves once)."""
    with locked(store, holder):
        networks = stored_networks(store)
        vni = network_records.resolve(network, networks)
        path = schema.network(vni)
        data, stat = store.zk.get(path)
        record = schema.decode(data)
        existing = (record.get("reservations") or {}).get(mac.lower())
        if existing is not None:
            return {"vni": vni, "mac": mac.lower(), **existing}
        leases = store.read(schema.network_leases(vni)) or {}
        address = network_records.free_address(record, leases)
        reservation = network_records.check_reservation(record, mac, address, hostname)
        record["reservations"] = {**(record.get("reservations") or {}), mac.lower(): reservation}
        store.transaction().set(path, record, version=stat.version).commit()
        return {"vni": vni, "mac": mac.lower(), **reservation}
