"""The network devices PVC makes on a node, through `ip` and `bridge` (iproute2).

Every device carries PVC's prefix and its network's VNI in its name (`bridge_name`: ``pvcbrVNI``; the VLAN
sub-interface ``pvcvlVNI``; the VXLAN device ``pvcvxVNI``), so a node tells its own devices from any other's
after a restart, and removes only its own. Every operation is idempotent: it reads what exists first and changes
only what differs, so running it twice is running it once.
"""
import json
import subprocess
from dataclasses import dataclass
from typing import Iterable

from pvc.errors import OperationFailed

PREFIX = "pvc"
KINDS = {"bridge": "br", "vlan": "vl", "vxlan": "vx"}
VXLAN_PORT = 4789
COMMAND_TIMEOUT_S = 10


def bridge_name(vni: int) -> str:
    """The bridge a VM's NIC on network `vni` joins; the same on every node, so a migrating VM's document is."""
    return f"{PREFIX}{KINDS['bridge']}{vni}"


def _name(kind: str, vni: int) -> str:
    return f"{PREFIX}{KINDS[kind]}{vni}"


def run(*argv: str, check: bool = True) -> str:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                            stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise OperationFailed(f"{' '.join(argv)}: {result.stderr.strip() or 'exit ' + str(result.returncode)}")
    return result.stdout


@dataclass(frozen=True)
class Link:
    name: str
    kind: str
    master: str | None
    mtu: int
    up: bool


def links() -> dict[str, Link]:
    """Every link of this namespace by name."""
    found = {}
    for entry in json.loads(run("ip", "-d", "-j", "link", "show") or "[]"):
        kind = ((entry.get("linkinfo") or {}).get("info_kind")) or ""
        found[entry["ifname"]] = Link(entry["ifname"], kind, entry.get("master"), int(entry.get("mtu", 0)),
                                      "UP" in (entry.get("flags") or []))
    return found


def own_networks(existing: dict[str, Link]) -> set[int]:
    """The VNIs of the networks whose devices PVC made here (any of the three)."""
    vnis = set()
    for name in existing:
        for short in KINDS.values():
            tag = f"{PREFIX}{short}"
            if name.startswith(tag) and name[len(tag):].isdigit():
                vnis.add(int(name[len(tag):]))
    return vnis


def first_ipv4(device: str) -> str:
    """The first IPv4 address of `device`: where this node's VXLAN tunnels start."""
    for entry in json.loads(run("ip", "-j", "-4", "addr", "show", "dev", device) or "[]"):
        for address in entry.get("addr_info") or []:
            if address.get("family") == "inet":
                return address["local"]
    raise OperationFailed(f"device {device} has no IPv4 address for VXLAN tunnels")


def ensure(vni: int, network_type: str, mtu: int, uplink: str, local_address: str | None,
           peers: Iterable[str], existing: dict[str, Link]) -> list[str]:
    """The bridge of network `vni` with its member device (a VLAN of `uplink`, or a VXLAN from `local_address`
    flooding to `peers`), at `mtu`, up; returns what it changed. A failure removes what this call added, so
    nothing is left half-made."""
    bridge = bridge_name(vni)
    member = _name("vlan" if network_type == "bridged" else "vxlan", vni)
    if bridge in existing and existing[bridge].kind != "bridge":
        raise OperationFailed(f"{bridge} exists but is a {existing[bridge].kind or 'plain'} device, not a bridge")
    added: list[str] = []
    try:
        if bridge not in existing:
            run("ip", "link", "add", bridge, "type", "bridge")
            added.append(bridge)
        if member not in existing:
            _add_member(vni, network_type, member, uplink, local_address)
            added.append(member)
        current = existing.get(member)
        if current is None or current.mtu != mtu:
            run("ip", "link", "set", member, "mtu", str(mtu))
        if current is None or current.master != bridge:
            run("ip", "link", "set", member, "master", bridge)
        if current is None or not current.up:
            run("ip", "link", "set", member, "up")
        if bridge not in existing or existing[bridge].mtu != mtu or not existing[bridge].up:
            run("ip", "link", "set", bridge, "mtu", str(mtu), "up")
        flooded = _flood_to(member, set(peers)) if network_type == "managed" else []
    except OperationFailed:
        for name in reversed(added):
            run("ip", "link", "del", name, check=False)
        raise
    return [f"added {name}" for name in added] + flooded


def _add_member(vni: int, network_type: str, member: str, uplink: str, local_address: str | None) -> None:
    try:
        if network_type == "bridged":
            run("ip", "link", "add", "link", uplink, "name", member, "type", "vlan", "id", str(vni))
        else:
            run("ip", "link", "add", member, "type", "vxlan", "id", str(vni), "dstport", str(VXLAN_PORT),
                "local", local_address, "nolearning")
    except OperationFailed as error:
        if "Unknown device type" in str(error):
            needed = "802.1Q VLANs (CONFIG_VLAN_8021Q)" if network_type == "bridged" else "VXLAN (CONFIG_VXLAN)"
            raise OperationFailed(f"this node's kernel has no {needed}, which network {vni} needs") from None
        raise


def _flood_to(vxlan: str, peers: set[str]) -> list[str]:
    """Head-end replication: one all-zero FDB entry per peer node, and none for a node that is gone."""
    entries = json.loads(run("bridge", "-j", "fdb", "show", "dev", vxlan) or "[]")
    present = {entry["dst"] for entry in entries if entry.get("mac") == "00:00:00:00:00:00" and entry.get("dst")}
    changed = []
    for peer in sorted(peers - present):
        run("bridge", "fdb", "append", "00:00:00:00:00:00", "dev", vxlan, "dst", peer)
        changed.append(f"{vxlan} floods to {peer}")
    for gone in sorted(present - peers):
        run("bridge", "fdb", "del", "00:00:00:00:00:00", "dev", vxlan, "dst", gone)
        changed.append(f"{vxlan} no longer floods to {gone}")
    return changed


def foreign_ports(vni: int, existing: dict[str, Link]) -> list[str]:
    """The ports of network `vni`'s bridge that PVC did not make here: a VM's NICs."""
    bridge = bridge_name(vni)
    own = {_name("vlan", vni), _name("vxlan", vni)}
    return sorted(name for name, link in existing.items() if link.master == bridge and name not in own)


def remove(vni: int, existing: dict[str, Link]) -> list[str]:
    """Every device of network `vni` PVC made here."""
    removed = []
    for kind in ("vlan", "vxlan", "bridge"):
        name = _name(kind, vni)
        if name in existing:
            run("ip", "link", "del", name)
            removed.append(f"removed {name}")
    return removed
