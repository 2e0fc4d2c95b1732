"""Remote object `networks`: client networks, bridged (a VLAN on every node's uplink) and managed (a VXLAN
overlay PVC serves with a gateway, DHCP and DNS).

Every change takes the network lock (`pvc.rpc.network_use`), checks the whole record against every other
network (`pvc.network_records`) and writes it in one transaction, so a refused request writes nothing. Nodes
make and remove their devices from the records and from their VMs' needs (`pvc.node.network`). Reads come from
a watched collection.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import Pyro5.server
from kazoo.exceptions import NoNodeError

from pvc import network_acl, network_records, schema
from pvc.cache import OWN_VALUE, WatchedCollection
from pvc.errors import AlreadyExists, Conflict, InvalidInput, NotFound
from pvc.rpc import network_use
from pvc.rpc.context import CoordinatorContext
from pvc.rpc.retries import retry_safe


@Pyro5.server.expose
@Pyro5.server.behavior(instance_mode="single")
@retry_safe(reads={"list", "info", "acl_list", "dhcp_list"})
class NetworksArea:
    """``client.networks``: client networks, their firewall rules (ACLs) and DHCP reservations. A network is
    named by its VNI or its description wherever one is asked for."""

    def __init__(self, context: CoordinatorContext):
        self._context = context
        self._networks = WatchedCollection(context.store, schema.NETWORKS, lambda name: schema.network(int(name)),
                                           schema.NETWORK_KEYS)
        self._networks.start()

    def _replayed(self, method: str, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any] | None:
        """What a call whose coordinator died before answering did, read now: the network (or the ACL or
        reservation added); None for a removal, or once the thing is gone."""
        names = {"acl_add": ("vni", "name"), "dhcp_add": ("vni", "mac")}.get(method, ("vni",))
        arguments = {**dict(zip(names, args)), **kwargs}
        try:
            if method.endswith("remove"):
                return None
            if method == "acl_add":
                return next((acl for acl in self.acl_list(arguments["vni"]) if acl["name"] == arguments["name"]),
                            None)
            if method == "dhcp_add":
                return next((row for row in self.dhcp_list(arguments["vni"])
                             if row["mac"] == str(arguments["mac"]).lower()), None)
            return self.info(arguments["vni"])
        except NotFound:
            return None

    def list(self) -> list[dict[str, Any]]:
        """Every network, sorted by VNI, with the node routing managed ones.

        :raises Unavailable: no coordinator answered (nothing else: it refuses nothing)
        """
        users, router = self._users(), self._router()
        views = [self._view(raw[OWN_VALUE], users, router)
                 for name, raw in self._networks.snapshot().items() if raw.get(OWN_VALUE)]
        return sorted(views, key=lambda view: view["vni"])

    def info(self, vni: int | str) -> dict[str, Any]:
        """One network, by VNI or description, with the VMs using it and its router (managed networks).

        :raises NotFound: no network of that VNI or description
        """
        return self._view(self._require(vni), self._users(), self._router())

    @staticmethod
    def _view(record: dict[str, Any], users: dict[int, list[str]], router: str | None) -> dict[str, Any]:
        return {**network_records.network_view(record, users.get(record["vni"], [])),
                "router": router if record["type"] == "managed" else None}

    def _router(self) -> str | None:
        return (self._context.store.read(schema.NETWORK_ROUTER) or {}).get("node")

    def add(self, vni: int | str, network_type: str, **fields: Any) -> dict[str, Any]:
        """A new network; `fields` are `pvc.network_records.FIELDS` (description, domain, mtu, ipv4_network,
        ipv4_gateway, dhcp4_start, dhcp4_end, ipv6_network, ipv6_gateway).

        The record is checked whole before anything is written: the VNI's range for its type (1-4094 for a
        bridged network's VLAN, 1-16777215 for a managed network's VXLAN), a unique description starting with a
        letter, no addresses on a bridged network, each subnet not overlapping another network's, the gateway
        inside its subnet, the DHCP range inside the subnet and not over the gateway, and the MTU within what
        the underlay carries (``underlay_mtu``, less 50 for VXLAN).

        :raises InvalidInput: an unknown type or field, or a value one of the checks above refuses (the message
            names the field)
        :raises AlreadyExists: a network of that VNI exists
        :raises Busy: another change holds the networks' lock
        """
        vni = network_records.check_vni(vni, network_type if network_type in network_records.NETWORK_TYPES
                                        else None)
        with network_use.locked(self._context.store, self._context.name):
            networks = network_use.stored_networks(self._context.store)
            if vni in networks:
                raise AlreadyExists(f"network {vni} exists already")
            record = network_records.check_network(vni, network_type, fields, networks, self._underlay_mtu())
            self._context.store.transaction().create(schema.network(vni), record).commit()
            self._networks.refresh(str(vni))
        return self.info(vni)

    def modify(self, vni: int | str, **changes: Any) -> dict[str, Any]:
        """Change the fields named in `changes` (None clears one); the type and VNI stay. Nodes apply the
        change to the devices and services they run.

        The changed record is checked as `add` checks a new one, and every DHCP reservation must still fit it.

        :raises NotFound: no network of that VNI or description
        :raises InvalidInput: a change of type or VNI, an unknown field, a value the checks refuse, or a
            reservation the changed subnet or gateway no longer allows
        :raises Busy: another change holds the networks' lock
        """
        with network_use.locked(self._context.store, self._context.name):
            networks = network_use.stored_networks(self._context.store)
            current = networks.pop(self._require(vni)["vni"], None)
            if current is None:
                raise NotFound(f"no network {vni}")
            if "type" in changes or "vni" in changes:
                raise InvalidInput("a network's type and VNI cannot change: add a new network and move the VMs")
            fields = {**{key: current.get(key) for key in network_records.FIELDS}, **changes}
            if "mtu" not in changes and current.get("mtu") == network_records.max_mtu(current["type"],
                                                                                      self._underlay_mtu()):
                fields["mtu"] = None
            record = network_records.check_network(current["vni"], current["type"], fields, networks,
                                                   self._underlay_mtu())
            record = {**record, "acls": current.get("acls") or [], "reservations": {}}
            for mac, reserved in (current.get("reservations") or {}).items():
                record["reservations"][mac] = network_records.check_reservation(record, mac, reserved["ip"],
                                                                                reserved["hostname"])
            try:
                self._context.store.transaction().set(schema.network(current["vni"]), record).commit()
            except NotFound:
                raise NotFound(f"no network {vni} (removed meanwhile)") from None
            finally:
                self._networks.refresh(str(current["vni"]))
        return self.info(current["vni"])

    def remove(self, vni: int | str) -> None:
        """Remove a network no VM uses, with its ACLs, reservations and recorded leases.

        :raises NotFound: no network of that VNI or description
        :raises Conflict: VMs use the network (the message names them)
        :raises Busy: another change holds the networks' lock
        """
        with network_use.locked(self._context.store, self._context.name):
            record = self._require(vni)
            users = network_use.users(self._context.store, record["vni"])
            if users:
                raise Conflict(f"network {record['vni']} is used by VM(s) {', '.join(users)}; remove their "
                               "interfaces on it first")
            path = schema.network(record["vni"])
            children = [f"{path}/{child}" for child in self._context.store.children(path)]
            try:
                self._context.store.transaction().delete_tree([*children, path]).commit()
            except NotFound:
                raise NotFound(f"no network {vni} (removed meanwhile)") from None
            finally:
                self._networks.refresh(str(record["vni"]))

    # -- firewall rules ---------------------------------------------------------------------------------

    def acl_list(self, vni: int | str, direction: str | None = None) -> list[dict[str, Any]]:
        """The network's ACLs in the order the router applies them: ``in`` then ``out``, by order; with
        `direction`, that direction's alone.

        :raises NotFound: no network of that VNI or description
        """
        record = self._require(vni)
        return [network_acl.acl_view(record["vni"], acl) for acl in _ordered(record.get("acls") or [])
                if direction is None or acl["direction"] == direction]

    def acl_add(self, vni: int | str, name: str, direction: str, order: int, rule: str) -> dict[str, Any]:
        """A firewall rule for a managed network, checked by nft; the router applies it on its next pass.

        `rule` is exactly one nftables rule (``tcp dport 22 drop``), placed as written in PVC's chain for the
        network and `direction` (``in``: to the network's guests, ``out``: from them) at `order` (0-65535).

        :raises InvalidInput: a malformed name, an unknown direction, an order out of range, a rule that is not
            exactly one rule (a ``;``, a line break, an unbalanced brace, an nft command, a jump or goto), a rule
            nft refuses (nft's reason), nft missing on the coordinator, or a bridged network
        :raises NotFound: no network of that VNI or description
        :raises AlreadyExists: the network has an ACL of that name
        :raises Busy: another change holds the networks' lock
        """
        acl = network_acl.check_acl(name, direction, order, rule)
        with self._changing(vni) as record:
            if record["type"] != "managed":
                raise InvalidInput(f"network {record['vni']} is bridged: PVC routes and filters only managed ones")
            if any(existing["name"] == name for existing in record.get("acls") or []):
                raise AlreadyExists(f"network {record['vni']} has an ACL named '{name}' already")
            record["acls"] = [*(record.get("acls") or []), acl]
        return network_acl.acl_view(record["vni"], acl)

    def acl_remove(self, vni: int | str, name: str) -> None:
        """Remove the network's ACL `name`; the router drops the rule on its next pass.

        :raises NotFound: no network of that VNI or description, or no ACL of that name on it
        :raises Busy: another change holds the networks' lock
        """
        with self._changing(vni) as record:
            kept = [acl for acl in record.get("acls") or [] if acl["name"] != name]
            if len(kept) == len(record.get("acls") or []):
                raise NotFound(f"network {record['vni']} has no ACL named '{name}'")
            record["acls"] = kept

    # -- DHCP -------------------------------------------------------------------------------------------

    def dhcp_list(self, vni: int | str) -> list[dict[str, Any]]:
        """The network's reservations and the leases its router recorded, by MAC.

        :raises NotFound: no network of that VNI or description
        """
        record = self._require(vni)
        raw = self._networks.get(str(record["vni"])) or {}
        return network_records.reservation_views(record, raw.get("leases") or {})

    def dhcp_add(self, vni: int | str, mac: str, ip: str, hostname: str | None = None) -> dict[str, Any]:
        """Reserve `ip` for `mac` (and name it `hostname` in the network's DNS); the router's dnsmasq hands
        it out from its next pass.

        :raises InvalidInput: a bridged network or one without an IPv4 subnet, a malformed or multicast MAC, an
            address outside the subnet, the gateway, or reserved for another MAC, or a malformed hostname
        :raises NotFound: no network of that VNI or description
        :raises AlreadyExists: the MAC has a reservation on the network already
        :raises Busy: another change holds the networks' lock
        """
        with self._changing(vni) as record:
            reservation = network_records.check_reservation(record, mac, ip, hostname)
            mac = mac.lower()
            if mac in (record.get("reservations") or {}):
                raise AlreadyExists(f"network {record['vni']} has a reservation for {mac} already")
            record["reservations"] = {**(record.get("reservations") or {}), mac: reservation}
        return {"name": mac, "mac": mac, "vni": record["vni"], **reservation}

    def dhcp_remove(self, vni: int | str, mac: str) -> None:
        """Remove the reservation of `mac`; the router's dnsmasq no longer holds the address for it from its
        next pass.

        :raises NotFound: no network of that VNI or description, or no reservation for that MAC on it
        :raises Busy: another change holds the networks' lock
        """
        with self._changing(vni) as record:
            reservations = dict(record.get("reservations") or {})
            if reservations.pop(str(mac).lower(), None) is None:
                raise NotFound(f"network {record['vni']} has no reservation for {mac}")
            record["reservations"] = reservations

    @contextmanager
    def _changing(self, vni: int | str) -> Iterator[dict[str, Any]]:
        """The network's stored record to change in place; written back (version-checked) when the block ends
        without an error."""
        with network_use.locked(self._context.store, self._context.name):
            found = self._require(vni)
            try:
                data, stat = self._context.store.zk.get(schema.network(found["vni"]))
            except NoNodeError:
                self._networks.refresh(str(found["vni"]))
                raise NotFound(f"no network {vni} (removed meanwhile)") from None
            record = schema.decode(data)
            yield record
            self._context.store.transaction().set(schema.network(found["vni"]), record, version=stat.version) \
                .commit()
            self._networks.refresh(str(found["vni"]))

    def _require(self, vni: int | str) -> dict[str, Any]:
        records = {int(name): raw[OWN_VALUE] for name, raw in self._networks.snapshot().items()
                   if raw.get(OWN_VALUE)}
        try:
            return records[network_records.resolve(vni, records)]
        except InvalidInput:
            raise NotFound(f"no network {vni}") from None

    def _users(self) -> dict[int, list[str]]:
        users: dict[int, list[str]] = {}
        for name, raw in self._context.cache.vms.snapshot().items():
            for vni in (raw.get(OWN_VALUE) or {}).get("networks") or []:
                users.setdefault(vni, []).append(name)
        return users

    def _underlay_mtu(self) -> int:
        return int((self._context.cache.config.get() or {}).get("underlay_mtu")
                   or schema.DEFAULT_CLUSTER_CONFIG["underlay_mtu"])


def _ordered(acls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(acls, key=lambda acl: (acl["direction"] != "in", acl["order"], acl["name"]))
