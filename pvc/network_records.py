"""Client networks as ZooKeeper records them and as users see them, checked in this one place.

A network is keyed by its VNI: a bridged network's VNI is the VLAN id on every node's uplink (1-4094), a managed
network's is the VXLAN id of its overlay between the nodes (1-16777215). Only a managed network has addresses
(PVC runs its gateway, DHCP and DNS); a bridged one is the upstream's VLAN, whose addresses are someone else's.
A record is checked whole, against every other network, before it is written, so a stored network is always
usable as it stands; every error names the field and what is wrong with it, on one line.
"""
import ipaddress
import re
from typing import Any, Iterable, Mapping

from pvc.errors import InvalidInput

NETWORK_TYPES = ("bridged", "managed")
VNI_RANGE = {"bridged": (1, 4094), "managed": (1, 16777215)}
VXLAN_OVERHEAD = 50
"""Bytes a VXLAN packet adds to the guest's frame (outer IPv4 20, UDP 8, VXLAN 8, inner Ethernet 14)."""
MIN_MTU = {4: 576, 6: 1280}
"""The smallest MTU IPv4 and IPv6 allow; a network carrying IPv6 needs 1280."""

FIELDS = ("description", "domain", "mtu", "ipv4_network", "ipv4_gateway", "dhcp4_start", "dhcp4_end",
          "ipv6_network", "ipv6_gateway")
ADDRESS_FIELDS = FIELDS[3:]

_DESCRIPTION = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,31}")
_DOMAIN_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def check_network(vni: Any, network_type: str, spec: Mapping[str, Any], others: Mapping[int, Mapping[str, Any]],
                  underlay_mtu: int) -> dict[str, Any]:
    """The record of network `vni` from what a user gave, complete and normalised, or `InvalidInput`; `others`
    are the other networks' records by VNI (overlaps and descriptions are checked against them)."""
    unknown = sorted(set(spec) - set(FIELDS))
    if unknown:
        raise InvalidInput(f"unknown network field(s): {', '.join(unknown)} (known: {', '.join(FIELDS)})")
    if network_type not in NETWORK_TYPES:
        raise InvalidInput(f"unknown network type {network_type!r} (one of: {', '.join(NETWORK_TYPES)})")
    vni = check_vni(vni, network_type)
    record: dict[str, Any] = {"vni": vni, "type": network_type,
                              **{field: spec.get(field) or None for field in FIELDS}}
    if network_type == "bridged":
        given = [field for field in ADDRESS_FIELDS + ("domain",) if record[field] is not None]
        if given:
            raise InvalidInput(f"a bridged network has no {', '.join(given)}: its addresses are the upstream "
                               "VLAN's own; use --type managed for a network PVC serves")
    record["description"] = _description(record["description"], vni, others)
    record["domain"] = _domain(record["domain"])
    _ipv4(record)
    _ipv6(record)
    _no_overlap(record, others)
    record["mtu"] = _mtu(record, underlay_mtu)
    return record


def check_vni(vni: Any, network_type: str | None = None) -> int:
    if isinstance(vni, str) and vni.strip().isdigit():
        vni = int(vni)
    low, high = VNI_RANGE.get(network_type or "managed")
    if not isinstance(vni, int) or isinstance(vni, bool) or not low <= vni <= high:
        what = f"a {network_type} network's" if network_type else "a network's"
        raise InvalidInput(f"invalid VNI {vni!r}: {what} VNI is {low}-{high}"
                           + (" (the VLAN id on each node's uplink)" if network_type == "bridged" else ""))
    return vni


def _description(description: Any, vni: int, others: Mapping[int, Mapping[str, Any]]) -> str:
    """A description is a second name a NIC may use, so it starts with a letter (never a VNI) and is unique."""
    description = description if description is not None else f"net{vni}"
    if not isinstance(description, str) or not _DESCRIPTION.fullmatch(description):
        raise InvalidInput(f"invalid description {description!r}: 1-32 letters, digits, '.', '_' or '-', "
                           "starting with a letter (a NIC may name the network by it)")
    for other_vni, other in others.items():
        if other.get("description") == description:
            raise InvalidInput(f"description '{description}' is network {other_vni}'s already")
    return description


def _domain(domain: Any) -> str | None:
    if domain is None:
        return None
    labels = str(domain).lower().rstrip(".").split(".")
    if len(str(domain)) > 253 or not all(_DOMAIN_LABEL.fullmatch(label) for label in labels):
        raise InvalidInput(f"invalid domain {domain!r}: DNS labels of letters, digits and '-', joined by '.'")
    return ".".join(labels)


def _subnet(field: str, value: Any, version: int) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        subnet = ipaddress.ip_network(str(value), strict=False)
    except ValueError:
        raise InvalidInput(f"invalid {field} {value!r}: an IPv{version} network in CIDR form") from None
    if subnet.version != version or "/" not in str(value):
        raise InvalidInput(f"invalid {field} {value!r}: an IPv{version} network in CIDR form")
    if ipaddress.ip_interface(str(value)).ip != subnet.network_address:
        raise InvalidInput(f"invalid {field} {value!r}: host bits set (the network is {subnet})")
    if subnet.prefixlen > (30 if version == 4 else 126):
        raise InvalidInput(f"{field} {subnet} is too small to hold a gateway and a guest")
    return subnet


def _address(field: str, value: Any, subnet, version: int) -> str:
    try:
        address = ipaddress.ip_address(str(value))
    except ValueError:
        raise InvalidInput(f"invalid {field} {value!r}: an IPv{version} address") from None
    if address.version != version or address not in subnet:
        raise InvalidInput(f"{field} {value} is outside the network {subnet}")
    if address == subnet.network_address or (version == 4 and address == subnet.broadcast_address):
        which = "network" if address == subnet.network_address else "broadcast"
        raise InvalidInput(f"{field} {value} is the {which} address of {subnet}")
    return str(address)


def _ipv4(record: dict[str, Any]) -> None:
    if record["ipv4_network"] is None:
        given = [field for field in ("ipv4_gateway", "dhcp4_start", "dhcp4_end") if record[field] is not None]
        if given:
            raise InvalidInput(f"{', '.join(given)} given without an IPv4 network (--ipv4 CIDR)")
        return
    subnet = _subnet("IPv4 network", record["ipv4_network"], 4)
    record["ipv4_network"] = str(subnet)
    if record["ipv4_gateway"] is None:
        raise InvalidInput(f"IPv4 network {subnet} needs a gateway (--gateway4 IP)")
    record["ipv4_gateway"] = _address("IPv4 gateway", record["ipv4_gateway"], subnet, 4)
    if (record["dhcp4_start"] is None) != (record["dhcp4_end"] is None):
        raise InvalidInput("a DHCP range needs both its start and its end (--dhcp4 START-END)")
    if record["dhcp4_start"] is None:
        return
    start = ipaddress.ip_address(_address("DHCP range start", record["dhcp4_start"], subnet, 4))
    end = ipaddress.ip_address(_address("DHCP range end", record["dhcp4_end"], subnet, 4))
    if start > end:
        raise InvalidInput(f"DHCP range {start}-{end} ends before it starts")
    if start <= ipaddress.ip_address(record["ipv4_gateway"]) <= end:
        raise InvalidInput(f"DHCP range {start}-{end} covers the gateway {record['ipv4_gateway']}")
    record["dhcp4_start"], record["dhcp4_end"] = str(start), str(end)


def _ipv6(record: dict[str, Any]) -> None:
    if record["ipv6_network"] is None:
        if record["ipv6_gateway"] is not None:
            raise InvalidInput("ipv6_gateway given without an IPv6 network (--ipv6 CIDR)")
        return
    subnet = _subnet("IPv6 network", record["ipv6_network"], 6)
    record["ipv6_network"] = str(subnet)
    if record["ipv6_gateway"] is None:
        raise InvalidInput(f"IPv6 network {subnet} needs a gateway (--gateway6 IP)")
    record["ipv6_gateway"] = _address("IPv6 gateway", record["ipv6_gateway"], subnet, 6)


def _no_overlap(record: dict[str, Any], others: Mapping[int, Mapping[str, Any]]) -> None:
    for field in ("ipv4_network", "ipv6_network"):
        if record[field] is None:
            continue
        subnet = ipaddress.ip_network(record[field])
        for other_vni, other in sorted(others.items()):
            if other.get(field) and subnet.overlaps(ipaddress.ip_network(other[field])):
                raise InvalidInput(f"{field.replace('_', ' ').replace('ipv', 'IPv')} {subnet} overlaps network "
                                   f"{other_vni}'s {other[field]}")


def max_mtu(network_type: str, underlay_mtu: int) -> int:
    return underlay_mtu - VXLAN_OVERHEAD if network_type == "managed" else underlay_mtu


def check_underlay_mtu(mtu: Any, networks: Mapping[int, Mapping[str, Any]]) -> int:
    """A new underlay MTU, refused when it would leave a network's MTU above what the underlay carries."""
    if not isinstance(mtu, int) or isinstance(mtu, bool) or not MIN_MTU[4] + VXLAN_OVERHEAD <= mtu <= 65535:
        raise InvalidInput(f"invalid underlay MTU {mtu!r}: a whole number from {MIN_MTU[4] + VXLAN_OVERHEAD} "
                           "to 65535")
    for vni, record in sorted(networks.items()):
        if record["mtu"] > max_mtu(record["type"], mtu):
            raise InvalidInput(f"underlay MTU {mtu} is too small for network {vni}'s MTU {record['mtu']}")
    return mtu


def _mtu(record: dict[str, Any], underlay_mtu: int) -> int:
    most = max_mtu(record["type"], underlay_mtu)
    mtu = record["mtu"]
    if mtu is None:
        return most
    if isinstance(mtu, str) and mtu.strip().isdigit():
        mtu = int(mtu)
    least = MIN_MTU[6] if record["ipv6_network"] else MIN_MTU[4]
    if not isinstance(mtu, int) or isinstance(mtu, bool) or mtu < least:
        raise InvalidInput(f"invalid MTU {mtu!r}: a whole number from {least}")
    if mtu > most:
        why = f"the underlay's {underlay_mtu} minus {VXLAN_OVERHEAD} for VXLAN" if record["type"] == "managed" \
            else f"the underlay's {underlay_mtu}"
        raise InvalidInput(f"MTU {mtu} is above what the network can carry: at most {most} ({why})")
    return mtu


def resolve(name: Any, networks: Mapping[int, Mapping[str, Any]]) -> int:
    """The VNI a NIC's ``<source network='...'/>`` means: a VNI, or a network's description."""
    text = str(name).strip()
    matches = sorted({vni for vni, record in networks.items()
                      if str(vni) == text or record.get("description") == text})
    if not matches:
        raise InvalidInput(f"a NIC names network '{text}', which is no PVC network (pvc network list)")
    if len(matches) > 1:
        raise InvalidInput(f"a NIC names network '{text}', which is ambiguous (networks "
                           f"{', '.join(map(str, matches))}); name it by VNI")
    return matches[0]


def network_view(record: Mapping[str, Any], used_by: Iterable[str]) -> dict[str, Any]:
    """What `network list` and `info` return and ``--format json`` prints: the record and the VMs using it."""
    return {"name": str(record["vni"]), **{key: record.get(key) for key in ("vni", "type", *FIELDS)},
            "acls": len(record.get("acls") or []), "reservations": len(record.get("reservations") or {}),
            "used_by": sorted(used_by)}


_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def check_reservation(record: Mapping[str, Any], mac: Any, address: Any, hostname: Any) -> dict[str, Any]:
    """A DHCP reservation on managed network `record`: `mac` always gets `address` (and `hostname` in the
    network's DNS); refused outside the subnet, on the gateway, or on another reservation's address."""
    vni = record["vni"]
    if record["type"] != "managed" or not record.get("ipv4_network"):
        raise InvalidInput(f"network {vni} has no IPv4 subnet PVC serves: only a managed network's DHCP reserves")
    mac = str(mac).lower()
    if not _MAC.fullmatch(mac) or int(mac[:2], 16) & 1:
        raise InvalidInput(f"invalid MAC address {mac!r}: six unicast octets, 52:54:00:12:34:56")
    subnet = ipaddress.ip_network(record["ipv4_network"])
    address = _address("reserved address", address, subnet, 4)
    if address == record["ipv4_gateway"]:
        raise InvalidInput(f"reserved address {address} is network {vni}'s gateway")
    if hostname is not None and (not isinstance(hostname, str) or not _HOSTNAME.fullmatch(hostname)):
        raise InvalidInput(f"invalid hostname {hostname!r}: one DNS label of letters, digits and '-'")
    for other_mac, other in (record.get("reservations") or {}).items():
        if other_mac != mac and other["ip"] == address:
            raise InvalidInput(f"address {address} is reserved for {other_mac} already")
    return {"ip": address, "hostname": hostname}


def free_address(record: Mapping[str, Any], leases: Mapping[str, Any]) -> str:
    """The lowest address of the network's subnet a reservation may take: not the gateway, not in the dynamic
    DHCP range, not reserved or leased already."""
    if record["type"] != "managed" or not record.get("ipv4_network"):
        raise InvalidInput(f"network {record['vni']} has no IPv4 subnet PVC serves: only a managed network's DHCP "
                           "reserves")
    taken = {record["ipv4_gateway"], *(reserved["ip"] for reserved in (record.get("reservations") or {}).values()),
             *(lease.get("ip") for lease in (leases or {}).values())}
    start = ipaddress.ip_address(record["dhcp4_start"]) if record.get("dhcp4_start") else None
    end = ipaddress.ip_address(record["dhcp4_end"]) if record.get("dhcp4_end") else None
    for address in ipaddress.ip_network(record["ipv4_network"]).hosts():
        if str(address) not in taken and not (start and start <= address <= end):
            return str(address)
    raise InvalidInput(f"network {record['vni']} has no address left for a reservation outside its DHCP range")


def reservation_views(record: Mapping[str, Any], leases: Mapping[str, Any]) -> list[dict[str, Any]]:
    """`network dhcp list`: every reservation and every lease the router recorded, by MAC."""
    reservations = record.get("reservations") or {}
    rows = []
    for mac in sorted(set(reservations) | set(leases or {})):
        reserved, lease = reservations.get(mac) or {}, (leases or {}).get(mac) or {}
        rows.append({"name": mac, "mac": mac, "vni": record["vni"], "ip": lease.get("ip") or reserved.get("ip"),
                     "hostname": lease.get("hostname") or reserved.get("hostname"),
                     "reserved": bool(reserved), "expires": lease.get("expires")})
    return rows
