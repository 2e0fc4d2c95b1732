"""The services of managed networks on the router node: gateway addresses, dnsmasq, forwarding, NAT and ACLs.

The leader records which node routes (`schema.NETWORK_ROUTER`); the node it names starts the services and
reports ``routing``, and any other node stops them (it may have been the router before) and reports that, so
the leader gives the role to another node only once the old one has stopped, or been fenced
(`pvc.rpc.network_router`). Everything here is idempotent: a pass changes only what differs.
"""
import ipaddress
import logging
from pathlib import Path
from typing import Any, Mapping

from pvc.node.network import devices, dnsmasq, firewall
from pvc.node.network.lease_events import Handler, LeaseEvents

log = logging.getLogger(__name__)


class RouterServices:
    def __init__(self, run_directory: str, upstream_dev: str | None):
        self._run_directory = Path(run_directory)
        self._upstream = upstream_dev
        self._lease_events: LeaseEvents | None = None
        self._dnsmasqs: dict[int, dnsmasq.Dnsmasq] = {}
        self._ruleset: str | None = None
        self._stopped_clean = False
        """Whether `stop` has cleared what an earlier run of the daemon may have left."""
        self._clients: dict[int, set[str]] = {}
        """Per network, the MACs its dnsmasq was last started for (reservations and VMs' NICs): one that goes
        from here is a removed reservation's or VM's, whose lease is released."""
        self.routing = False

    def hear_leases(self, handler: Handler) -> None:
        """Have every dnsmasq started from now on tell `handler` of each lease as it grants it."""
        self._lease_events = LeaseEvents(self._run_directory, handler)

    def start(self, records: Mapping[int, Mapping[str, Any]], hosts: Mapping[int, Mapping[str, str]],
              leases: Mapping[int, Mapping[str, Any]]) -> list[str]:
        """Serve every managed network in `records` (whose devices exist); returns what changed."""
        managed = {vni: record for vni, record in records.items() if record["type"] == "managed"}
        changed = []
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1")
        if any(record.get("ipv6_network") for record in managed.values()):
            Path("/proc/sys/net/ipv6/conf/all/forwarding").write_text("1")
        for vni, record in sorted(managed.items()):
            changed += _gateway_addresses(record, add=True)
        ruleset = firewall.render(managed.values(), self._upstream)
        if ruleset != self._ruleset:
            firewall.apply(ruleset)
            self._ruleset = ruleset
            changed.append("firewall rules applied")
        for vni in sorted(set(self._dnsmasqs) - set(managed)):
            self._dnsmasqs.pop(vni).stop()
            changed.append(f"dnsmasq for network {vni} stopped")
        for vni in set(self._clients) - set(managed):
            del self._clients[vni]
        for vni, record in sorted(managed.items()):
            server = self._dnsmasqs.setdefault(vni, dnsmasq.Dnsmasq(self._run_directory, vni))
            config = dnsmasq.render(record, hosts.get(vni) or {}, server.lease_file, server.pid_file,
                                    self._lease_events.wrapper(vni) if self._lease_events is not None else None)
            clients = set(record.get("reservations") or {}) | set(hosts.get(vni) or {})
            gone = self._clients.get(vni, set()) - clients

            def keep(mac: str, lease: Mapping[str, Any], record=record, gone=gone) -> bool:
                return mac not in gone and dnsmasq.may_hold(record, mac, lease["ip"])
            if server.ensure(config, leases.get(vni) or {}, keep):
                changed.append(f"dnsmasq for network {vni} started")
            self._clients[vni] = clients
        self.routing = True
        return changed

    def stop(self, records: Mapping[int, Mapping[str, Any]]) -> list[str]:
        """Stop serving: no dnsmasq, no gateway address, no table of PVC's. Also what an earlier run left."""
        changed = []
        if not self.routing and self._stopped_clean:
            return changed
        for vni, server in sorted(self._dnsmasqs.items()):
            server.stop()
            changed.append(f"dnsmasq for network {vni} stopped")
        self._dnsmasqs.clear()
        self._clients.clear()
        for pid_file in self._run_directory.glob("dnsmasq-*.pid"):
            dnsmasq.stop_stale(pid_file, pid_file.with_suffix(".conf"))
        for record in records.values():
            if record["type"] == "managed":
                changed += _gateway_addresses(record, add=False)
        firewall.remove()
        self._ruleset = None
        self.routing = False
        self._stopped_clean = True
        return changed

    def leases(self) -> dict[int, dict[str, Any]]:
        """The leases each running dnsmasq holds, by VNI."""
        return {vni: server.leases() for vni, server in self._dnsmasqs.items()}


def _gateway_addresses(record: Mapping[str, Any], add: bool) -> list[str]:
    bridge = devices.bridge_name(record["vni"])
    present = devices.run("ip", "-o", "addr", "show", "dev", bridge, check=False)
    changed = []
    for network, gateway in ((record.get("ipv4_network"), record.get("ipv4_gateway")),
                             (record.get("ipv6_network"), record.get("ipv6_gateway"))):
        if not network:
            continue
        address = f"{gateway}/{ipaddress.ip_network(network).prefixlen}"
        there = f" {address} " in present
        if add and not there:
            devices.run("ip", "addr", "add", address, "dev", bridge, *(["nodad"] if ":" in gateway else []))
            changed.append(f"gateway {address} on {bridge}")
        elif not add and there:
            devices.run("ip", "addr", "del", address, "dev", bridge, check=False)
            changed.append(f"gateway {address} off {bridge}")
    return changed
