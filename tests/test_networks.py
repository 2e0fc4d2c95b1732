"""Client networks: records checked in one place and refused whole on bad input, VMs naming networks by VNI or
description, and a network in use kept; on a lab cluster, whose hosts each live in a network namespace."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import libvirt
import pytest

from pvc import schema
from conftest import RunningCluster, started_cluster
from helpers import cluster_store, eventually
from vm_support import pvc

NET = "169.254.{}.0/24"


@pytest.fixture(scope="module")
def lab_cluster(tmp_path_factory) -> Iterator[RunningCluster]:
    """Three test-driver hosts, each pvcnoded and libvirtd in its own lab namespace; hv1 routes (the first
    ready router node), hv2 and hv3 make only what their VMs need. The leader gives the router role once every
    node is ready, and the tests begin once hv1 has taken it (before that no network has a router)."""
    for cluster in started_cluster(Path(tmp_path_factory.mktemp("networks")), nodes=3, coordinators=1, lab=True):
        route_on(cluster, "hv1")
        yield cluster


def route_on(cluster, node: str) -> None:
    """Until `node` routes. The leader gives the role to the first ready router node by name, so a node that was
    ready first at the cluster's start may hold it: that one is flushed (the role leaves a node that is not
    ready) and returned to service once `node` routes."""
    client = cluster.client
    with cluster_store(cluster.local) as store:
        def router() -> str | None:
            return (store.read(schema.NETWORK_ROUTER) or {}).get("node")

        assert eventually(lambda: router() is not None, 60), "no node took the router role"
        holder = router()
        if holder != node:
            client.nodes.flush(holder)
        assert eventually(lambda: router() == node and
                          (store.read(schema.node_key(node, "networks")) or {}).get("routing"), 60), \
            f"{node} never took the router role (held by {router()})"
        if holder != node:
            client.nodes.ready(holder)
            assert eventually(lambda: client.nodes.info(holder)["domain_state"] == "ready", 30)


def ok(result) -> str:
    assert result.exit_code == 0, result.output
    return result.stdout


def refused(result) -> str:
    """The one line a refused command prints."""
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def stored_networks(cluster) -> str:
    return ok(pvc(cluster, "network", "list", "--format", "json"))


def nic_xml(name: str, *networks: str) -> str:
    nics = "".join(f"<interface type='network'><source network='{network}'/><model type='virtio'/></interface>"
                   for network in networks)
    return (f"<domain type='test'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
            f"<os><type>hvm</type></os><devices>{nics}</devices></domain>")


def test_networks_added_listed_shown_modified_and_removed(lab_cluster):
    managed = json.loads(ok(pvc(lab_cluster, "network", "add", "4100", "--type", "managed", "-d", "web",
                                "--domain", "web.test", "--ipv4", NET.format(210), "--gateway4", "169.254.210.1",
                                "--dhcp4", "169.254.210.100-169.254.210.199", "--ipv6", "fd00:210::/64",
                                "--gateway6", "fd00:210::1", "--format", "json")))
    assert managed == {"name": "4100", "vni": 4100, "type": "managed", "description": "web", "domain": "web.test",
                       "mtu": 1450, "ipv4_network": "169.254.210.0/24", "ipv4_gateway": "169.254.210.1",
                       "dhcp4_start": "169.254.210.100", "dhcp4_end": "169.254.210.199",
                       "ipv6_network": "fd00:210::/64", "ipv6_gateway": "fd00:210::1", "acls": 0,
                       "reservations": 0, "used_by": [], "router": "hv1"}
    # upstream's spellings: -p TYPE, -i/--ipnet, -g/--gateway, -s/-e for the DHCP range
    ok(pvc(lab_cluster, "network", "add", "4101", "-p", "managed", "--ipnet", NET.format(211), "-g",
           "169.254.211.1", "-s", "169.254.211.50", "-e", "169.254.211.60"))
    bridged = json.loads(ok(pvc(lab_cluster, "network", "add", "210", "--type", "bridged", "--format", "json")))
    assert (bridged["description"], bridged["mtu"], bridged["ipv4_network"]) == ("net210", 1500, None)

    table = ok(pvc(lab_cluster, "network", "list"))
    assert table.splitlines()[0].split()[:4] == ["VNI", "DESCRIPTION", "TYPE", "MTU"]
    assert [line.split()[0] for line in table.splitlines()[1:]] == ["210", "4100", "4101"]
    assert "169.254.211.50-169.254.211.60" in table
    assert [row["vni"] for row in json.loads(ok(pvc(lab_cluster, "network", "list", "web", "--format",
                                                    "json")))] == [4100]
    assert "DHCPv4 range: 169.254.210.100-169.254.210.199" in ok(pvc(lab_cluster, "network", "info", "web"))

    changed = json.loads(ok(pvc(lab_cluster, "network", "modify", "4101", "--mtu", "1400", "--no-dhcp4",
                                "-d", "db", "--format", "json")))
    assert (changed["mtu"], changed["dhcp4_start"], changed["description"]) == (1400, None, "db")
    assert "IPv4 gateway 169.254.210.1 is outside the network 169.254.211.0/24" in \
        refused(pvc(lab_cluster, "network", "modify", "db", "--gateway4", "169.254.210.1"))
    assert "overlaps network 4100's" in refused(pvc(lab_cluster, "network", "modify", "db", "--ipv4",
                                                    "169.254.210.0/25", "-g", "169.254.210.1"))
    assert "underlay MTU 1449 is too small for network 210's MTU 1500" in \
        refused(pvc(lab_cluster, "cluster", "config", "--underlay-mtu", "1449"))
    for vni in ("4101", "210", "web"):
        assert ok(pvc(lab_cluster, "network", "remove", vni, "--yes")).startswith("Removed network")
    assert json.loads(stored_networks(lab_cluster)) == []


@pytest.mark.parametrize("arguments, reason", [
    (["0", "-p", "managed"], "invalid VNI 0: a managed network's VNI is 1-16777215"),
    (["16777216", "-p", "managed"], "invalid VNI 16777216"),
    (["4095", "-p", "bridged"], "invalid VNI 4095: a bridged network's VNI is 1-4094"),
    (["4200", "-p", "managed", "--ipv4", NET.format(221), "--gateway4", "169.254.222.1"],
     "IPv4 gateway 169.254.222.1 is outside the network 169.254.221.0/24"),
    (["4200", "-p", "managed", "--ipv4", NET.format(221), "--gateway4", "169.254.221.255"],
     "IPv4 gateway 169.254.221.255 is the broadcast address of 169.254.221.0/24"),
    (["4200", "-p", "managed", "--ipv4", "169.254.221.7/24", "--gateway4", "169.254.221.1"], "host bits set"),
    (["4200", "-p", "managed", "--ipv4", NET.format(221)], "needs a gateway"),
    (["4200", "-p", "managed", "--ipv4", NET.format(221), "--gateway4", "169.254.221.1", "--dhcp4",
      "169.254.221.100-169.254.222.10"], "DHCP range end 169.254.222.10 is outside the network"),
    (["4200", "-p", "managed", "--ipv4", NET.format(221), "--gateway4", "169.254.221.150", "--dhcp4",
      "169.254.221.100-169.254.221.200"], "DHCP range 169.254.221.100-169.254.221.200 covers the gateway"),
    (["4200", "-p", "managed", "--ipv4", NET.format(221), "--gateway4", "169.254.221.1", "--dhcp4",
      "169.254.221.200-169.254.221.100"], "ends before it starts"),
    (["4200", "-p", "managed", "--ipv4", "169.254.220.128/25", "--gateway4", "169.254.220.129"],
     "IPv4 network 169.254.220.128/25 overlaps network 4199's 169.254.220.0/24"),
    (["4200", "-p", "managed", "--ipv6", "fd00:220::/48", "--gateway6", "fd00:220::1"],
     "IPv6 network fd00:220::/48 overlaps network 4199's fd00:220::/64"),
    (["4200", "-p", "managed", "--mtu", "1451"],
     "MTU 1451 is above what the network can carry: at most 1450 (the underlay's 1500 minus 50 for VXLAN)"),
    (["220", "-p", "bridged", "--mtu", "1501"], "MTU 1501 is above what the network can carry: at most 1500"),
    (["220", "-p", "bridged", "--ipv4", NET.format(221), "--gateway4", "169.254.221.1"],
     "a bridged network has no ipv4_network, ipv4_gateway"),
    (["4200", "-p", "managed", "-d", "first"], "description 'first' is network 4199's already"),
    (["4200", "-p", "managed", "-d", "4199"], "invalid description '4199'"),
    (["4199", "-p", "managed"], "network 4199 exists already"),
])
def test_bad_networks_are_refused_with_one_line_and_nothing_written(lab_cluster, arguments, reason):
    ok(pvc(lab_cluster, "network", "add", "4199", "-p", "managed", "-d", "first", "--ipv4", NET.format(220),
           "--gateway4", "169.254.220.1", "--ipv6", "fd00:220::/64", "--gateway6", "fd00:220::1"))
    try:
        assert eventually(lambda: "pvcbr4199" in pvc_devices(lab_cluster, "hv1"), 10), "the router serves 4199"
        before, devices = stored_networks(lab_cluster), every_nodes_devices(lab_cluster)
        assert reason in refused(pvc(lab_cluster, "network", "add", *arguments))
        time.sleep(0.5)  # a pass of each node
        assert stored_networks(lab_cluster) == before
        assert every_nodes_devices(lab_cluster) == devices, "a refused network made or removed no device"
    finally:
        ok(pvc(lab_cluster, "network", "remove", "4199", "--yes"))
        # The next case adds 4199 again: a bridge still being torn down would pass for the new one's.
        assert eventually(lambda: not any("4199" in device for devices in every_nodes_devices(lab_cluster).values()
                                          for device in devices), 15), "network 4199's devices stayed"


def test_a_vm_names_a_network_by_description_and_keeps_it_from_removal(lab_cluster):
    ok(pvc(lab_cluster, "network", "add", "4300", "-p", "managed", "-d", "shop", "--ipv4", NET.format(230),
           "--gateway4", "169.254.230.1"))
    ok(pvc(lab_cluster, "network", "add", "230", "-p", "bridged"))
    try:
        assert "names network 'nowhere', which is no PVC network" in \
            refused(pvc(lab_cluster, "vm", "define", "-", "--target", "hv1", input=nic_xml("netvm0", "nowhere")))
        ok(pvc(lab_cluster, "vm", "define", "-", "--target", "hv1", input=nic_xml("netvm1", "shop", "230")))
        stored = ok(pvc(lab_cluster, "vm", "dump", "netvm1"))
        assert "<source network=\"4300\"/>" in stored and "<source network=\"230\"/>" in stored
        assert json.loads(ok(pvc(lab_cluster, "network", "info", "shop", "--format", "json")))["used_by"] == \
            ["netvm1"]
        line = refused(pvc(lab_cluster, "network", "remove", "4300", "--yes"))
        assert line == "Error: network 4300 is used by VM(s) netvm1; remove their interfaces on it first"
        assert "4300" in stored_networks(lab_cluster)
        ok(pvc(lab_cluster, "vm", "network", "add", "netvm1", "shop", "--type", "network", "-a", "52:54:00:00:43:01"))
        added = ok(pvc(lab_cluster, "vm", "dump", "netvm1")).split("52:54:00:00:43:01")[1]
        assert added.startswith("\"/><source network=\"4300\"/>"), added
        assert "names network 'elsewhere', which is no PVC network" in refused(pvc(
            lab_cluster, "vm", "network", "add", "netvm1", "elsewhere", "--type", "network"))
        ok(pvc(lab_cluster, "vm", "remove", "netvm1", "--yes", "--wait"))
        ok(pvc(lab_cluster, "network", "remove", "4300", "--yes"))
    finally:
        pvc(lab_cluster, "vm", "remove", "netvm1", "--yes", "--wait")
        for vni in ("4300", "230"):
            pvc(lab_cluster, "network", "remove", vni, "--yes")


# -- node side: devices in each host's namespace ------------------------------------------------------------

def in_host(cluster, node: str, *argv: str, check: bool = True) -> str:
    result = subprocess.run(cluster.local.lab.command(node, list(argv)), capture_output=True, text=True, timeout=10)
    assert result.returncode == 0 or not check, result.stderr
    return result.stdout


def pvc_devices(cluster, node: str) -> dict[str, dict]:
    """The links PVC made in the host's namespace, by name, as `ip -d -j link` shows them."""
    return {link["ifname"]: link for link in json.loads(in_host(cluster, node, "ip", "-d", "-j", "link", "show"))
            if link["ifname"].startswith("pvc")}


def every_nodes_devices(cluster) -> dict[str, list[str]]:
    return {node: sorted(pvc_devices(cluster, node)) for node in ("hv1", "hv2", "hv3")}


def host_xml(cluster, node: str, vm: str) -> str:
    connection = libvirt.open(cluster.local.host(node).uri)
    try:
        return connection.lookupByName(vm).XMLDesc()
    finally:
        connection.close()


def pings(cluster, node: str, address: str) -> bool:
    return subprocess.run(cluster.local.lab.command(node, ["ping", "-c", "1", "-W", "1", address]),
                          capture_output=True).returncode == 0


@pytest.fixture
def two_networks(lab_cluster):
    ok(pvc(lab_cluster, "network", "add", "4400", "-p", "managed", "-d", "overlay", "--ipv4", NET.format(244),
           "--gateway4", "169.254.244.1"))
    ok(pvc(lab_cluster, "network", "add", "240", "-p", "bridged", "-d", "vlan240"))
    ok(pvc(lab_cluster, "network", "add", "241", "-p", "bridged", "-d", "vlan241"))
    yield
    for vm in ("nodevm1", "nodevm2"):
        pvc(lab_cluster, "vm", "remove", vm, "--yes", "--wait")
    for vni in ("4400", "240", "241"):
        pvc(lab_cluster, "network", "remove", vni, "--yes")


def test_nodes_make_a_networks_devices_for_their_vms_and_remove_them_after(lab_cluster, two_networks):
    lab = lab_cluster.local.lab
    assert pvc_devices(lab_cluster, "hv2") == {} and pvc_devices(lab_cluster, "hv3") == {}
    ok(pvc(lab_cluster, "vm", "define", "-", "--target", "hv2", input=nic_xml("nodevm1", "overlay")))
    ok(pvc(lab_cluster, "vm", "start", "nodevm1", "--wait"))

    made = pvc_devices(lab_cluster, "hv2")
    assert sorted(made) == ["pvcbr4400", "pvcvx4400"]
    vxlan = made["pvcvx4400"]["linkinfo"]["info_data"]
    assert (vxlan["id"], vxlan["local"], vxlan["port"], made["pvcvx4400"]["mtu"]) == \
        (4400, lab.address("hv2"), 4789, 1450)
    assert made["pvcvx4400"]["master"] == "pvcbr4400" and made["pvcbr4400"]["mtu"] == 1450
    flood = json.loads(in_host(lab_cluster, "hv2", "bridge", "-j", "fdb", "show", "dev", "pvcvx4400"))
    assert sorted(entry["dst"] for entry in flood if entry["mac"] == "00:00:00:00:00:00") == \
        [lab.address("hv1"), lab.address("hv3")]
    assert pvc_devices(lab_cluster, "hv3") == {}, "a node without the network's VMs makes nothing"
    assert eventually(lambda: sorted(pvc_devices(lab_cluster, "hv1")) == ["pvcbr4400", "pvcvx4400"], 5), \
        "the router serves the managed network, and only it"
    domain = host_xml(lab_cluster, "hv2", "nodevm1")
    assert "<source bridge='pvcbr4400'/>" in domain and "<mtu size='1450'/>" in domain

    ok(pvc(lab_cluster, "vm", "migrate", "nodevm1", "--target", "hv3", "--wait"))
    assert sorted(pvc_devices(lab_cluster, "hv3")) == ["pvcbr4400", "pvcvx4400"]
    assert eventually(lambda: pvc_devices(lab_cluster, "hv2") == {}, 10), "the VM left: its network goes"

    ok(pvc(lab_cluster, "vm", "remove", "nodevm1", "--yes", "--wait"))
    assert eventually(lambda: pvc_devices(lab_cluster, "hv3") == {}, 10)


def test_an_overlay_carries_traffic_between_hosts_and_to_the_routers_gateway(lab_cluster, two_networks):
    for vm, node in (("nodevm1", "hv2"), ("nodevm2", "hv3")):
        ok(pvc(lab_cluster, "vm", "define", "-", "--target", node, input=nic_xml(vm, "overlay")))
    for node in ("hv2", "hv3"):
        assert eventually(lambda: "pvcbr4400" in pvc_devices(lab_cluster, node), 10)
    # Addresses on the hosts' bridges stand in for guests here (the QEMU tests use real ones).
    in_host(lab_cluster, "hv2", "ip", "addr", "add", "169.254.244.12/24", "dev", "pvcbr4400")
    in_host(lab_cluster, "hv3", "ip", "addr", "add", "169.254.244.13/24", "dev", "pvcbr4400")
    assert eventually(lambda: pings(lab_cluster, "hv2", "169.254.244.13"), 5), "no traffic across the overlay"
    assert eventually(lambda: pings(lab_cluster, "hv3", "169.254.244.1"), 5), "the router's gateway does not answer"


def kernel_has_vlans() -> bool:
    """Whether this machine's kernel makes 802.1Q VLAN devices (some VM kernels are built without)."""
    scratch = "pvc-vlan-probe"
    subprocess.run(["ip", "netns", "add", scratch], capture_output=True)
    try:
        subprocess.run(["ip", "-n", scratch, "link", "add", "v0", "type", "veth", "peer", "name", "v1"],
                       capture_output=True)
        return subprocess.run(["ip", "-n", scratch, "link", "add", "link", "v0", "name", "v0.5", "type", "vlan",
                               "id", "5"], capture_output=True).returncode == 0
    finally:
        subprocess.run(["ip", "netns", "del", scratch], capture_output=True)


def test_vlans_carry_traffic_between_hosts_and_nothing_leaks_to_another_vlan(lab_cluster, two_networks):
    ok(pvc(lab_cluster, "vm", "define", "-", "--target", "hv2", input=nic_xml("nodevm1", "vlan240", "vlan241")))
    ok(pvc(lab_cluster, "vm", "define", "-", "--target", "hv3", input=nic_xml("nodevm2", "vlan240")))
    if not kernel_has_vlans():
        line = refused(pvc(lab_cluster, "vm", "start", "nodevm1", "--wait"))
        assert "this node's kernel has no 802.1Q VLANs (CONFIG_VLAN_8021Q), which network 240 needs" in line
        assert eventually(lambda: not [name for name in pvc_devices(lab_cluster, "hv2")
                                       if name.endswith(("240", "241"))], 10), \
            "a network that could not be made is not left half-made (a failed make is rolled back)"
        pytest.skip("this kernel has no 802.1Q VLANs (CONFIG_VLAN_8021Q): bridged networks are refused, "
                    "as shown; their traffic cannot be shown here")
    for node in ("hv2", "hv3"):
        assert eventually(lambda: "pvcbr240" in pvc_devices(lab_cluster, node), 10)
    made = pvc_devices(lab_cluster, "hv2")
    assert made["pvcvl240"]["linkinfo"]["info_data"]["id"] == 240 and made["pvcvl240"]["link"] == "eth0"
    assert made["pvcvl240"]["master"] == "pvcbr240"
    in_host(lab_cluster, "hv2", "ip", "addr", "add", "169.254.245.12/24", "dev", "pvcbr240")
    in_host(lab_cluster, "hv3", "ip", "addr", "add", "169.254.245.13/24", "dev", "pvcbr240")
    in_host(lab_cluster, "hv2", "ip", "addr", "add", "169.254.246.12/24", "dev", "pvcbr241")
    in_host(lab_cluster, "hv3", "ip", "addr", "add", "169.254.246.13/24", "dev", "pvcbr240")
    assert eventually(lambda: pings(lab_cluster, "hv2", "169.254.245.13"), 5), "no traffic across VLAN 240"
    assert not pings(lab_cluster, "hv2", "169.254.246.13"), "VLAN 241 reached an address on VLAN 240"


def test_a_node_removes_only_its_own_leftovers(lab_cluster):
    in_host(lab_cluster, "hv2", "ip", "link", "add", "pvcbr4999", "type", "bridge")
    in_host(lab_cluster, "hv2", "ip", "link", "add", "userbr0", "type", "bridge")
    try:
        assert eventually(lambda: "pvcbr4999" not in pvc_devices(lab_cluster, "hv2"), 10)
        assert "userbr0" in in_host(lab_cluster, "hv2", "ip", "link", "show")
    finally:
        in_host(lab_cluster, "hv2", "ip", "link", "del", "userbr0", check=False)


def test_a_node_keeps_a_networks_bridge_while_a_port_it_did_not_make_is_on_it(lab_cluster):
    """A port on a PVC bridge that PVC did not make is a VM's NIC, such as the tap of a migration arriving
    before the node's view shows the VM placed here: the bridge stays, whatever the node's view says, and goes
    once that port has gone."""
    in_host(lab_cluster, "hv2", "ip", "link", "add", "vnet-stray", "type", "veth", "peer", "name", "vnet-peer")
    try:
        # Named PVC's only once the port is on it, so that no pass sees it empty.
        in_host(lab_cluster, "hv2", "ip", "link", "add", "stray-br", "type", "bridge")
        in_host(lab_cluster, "hv2", "ip", "link", "set", "vnet-stray", "master", "stray-br")
        in_host(lab_cluster, "hv2", "ip", "link", "set", "stray-br", "name", "pvcbr4998")
        time.sleep(3)
        assert "pvcbr4998" in pvc_devices(lab_cluster, "hv2"), "a bridge with a guest's port on it was removed"
    finally:
        in_host(lab_cluster, "hv2", "ip", "link", "del", "vnet-stray", check=False)
        in_host(lab_cluster, "hv2", "ip", "link", "del", "stray-br", check=False)
    assert eventually(lambda: "pvcbr4998" not in pvc_devices(lab_cluster, "hv2"), 10), \
        "the bridge stayed after its last port had gone"


# -- router services: DHCP, DNS, NAT, ACLs, seen from namespaces standing in for guests ----------------------

DHCP_SCRIPT = """#!/bin/sh
case "$1" in bound|renew)
    ip -4 addr flush dev "$interface"; ip addr add "$ip/$mask" dev "$interface"
    ip route replace default via "$router"; echo "lease $ip/$mask router $router dns $dns" ;;
esac
"""
LISTENER = ("import socket; s = socket.create_server(('0.0.0.0', 7999)); print('ready', flush=True)\n"
            "while True: s.accept()[0].close()")


class StandIn:
    """A namespace the test makes, plugged into a host's bridge of a network by a veth: a guest without QEMU,
    taking its lease with busybox udhcpc."""

    def __init__(self, cluster, name: str, host: str, script: Path):
        lab = cluster.local.lab
        self.cluster, self.host, self.script = cluster, host, script
        self.netns, self.host_side = f"{lab.prefix}-{name}", f"sx{name}"
        subprocess.run(["ip", "netns", "add", self.netns], check=True)
        in_host(cluster, host, "ip", "link", "add", self.host_side, "type", "veth", "peer", "name", "eth0",
                "netns", self.netns)
        self.run("ip", "link", "set", "lo", "up")
        self.run("ip", "link", "set", "eth0", "mtu", "1450", "up")
        self.mac = json.loads(self.run("ip", "-j", "link", "show", "eth0"))[0]["address"]

    def plug(self, bridge: str) -> None:
        in_host(self.cluster, self.host, "ip", "link", "set", self.host_side, "master", bridge, "up")

    def run(self, *argv: str, check: bool = True, timeout: float = 20) -> str:
        result = subprocess.run(["ip", "netns", "exec", self.netns, *argv], capture_output=True, text=True,
                                timeout=timeout)
        assert result.returncode == 0 or not check, f"{argv}: {result.stderr}"
        return result.stdout if check else result.stdout + result.stderr

    def lease(self) -> str:
        """The address udhcpc was given, after a DHCP exchange across the network. Asked for up to 30 s: the
        router (re)starts the network's dnsmasq on its next pass after the network is added."""
        out = self.run("busybox", "udhcpc", "-i", "eth0", "-s", str(self.script), "-f", "-q", "-n", "-t", "30",
                       "-T", "1", timeout=45)
        return out.split("lease ", 1)[1].split("/", 1)[0]

    def resolves(self, name: str, server: str) -> str | None:
        out = self.run("busybox", "nslookup", name, server, check=False)
        answers = [line.split()[-1] for line in out.split("Name:", 1)[-1].splitlines() if "Address" in line]
        return answers[0] if "Name:" in out and answers else None

    def reaches(self, address: str, port: int = 7999) -> bool:
        return subprocess.run(["ip", "netns", "exec", self.netns, "timeout", "1", "bash", "-c",
                               f"exec 3<>/dev/tcp/{address}/{port}"], capture_output=True).returncode == 0

    def remove(self) -> None:
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)


@pytest.fixture
def served_network(lab_cluster, tmp_path):
    """Managed network 4700 with two stand-in guests on hv2 and hv3 and an upstream namespace behind the router."""
    script = tmp_path / "udhcpc.sh"
    script.write_text(DHCP_SCRIPT)
    script.chmod(0o755)
    lab = lab_cluster.local.lab
    ok(pvc(lab_cluster, "network", "add", "4700", "-p", "managed", "-d", "svc", "--domain", "svc.test",
           "--ipv4", NET.format(247), "--gateway4", "169.254.247.1", "--dhcp4", "169.254.247.100-169.254.247.150",
           "--ipv6", "fd00:247::/64", "--gateway6", "fd00:247::1"))
    stand_ins, upstream = [], f"{lab.prefix}-up"
    try:
        for name, host, vm in (("g1", "hv2", "webvm"), ("g2", "hv3", "dbvm")):
            stand_in = StandIn(lab_cluster, name, host, script)
            stand_ins.append(stand_in)
            xml = nic_xml(vm, "svc").replace("<interface type='network'>",
                                             f"<interface type='network'><mac address='{stand_in.mac}'/>")
            ok(pvc(lab_cluster, "vm", "define", "-", "--target", host, input=xml))
            assert eventually(lambda: "pvcbr4700" in pvc_devices(lab_cluster, host), 10)
            stand_in.plug("pvcbr4700")
        first, second = stand_ins
        subprocess.run(["ip", "netns", "add", upstream], check=True)
        in_host(lab_cluster, "hv1", "ip", "link", "add", "upstream0", "type", "veth", "peer", "name", "eth0",
                "netns", upstream)
        in_host(lab_cluster, "hv1", "ip", "addr", "add", "169.254.250.1/24", "dev", "upstream0")
        in_host(lab_cluster, "hv1", "ip", "link", "set", "upstream0", "up")
        in_host(lab_cluster, "hv1", "ip", "route", "add", "default", "via", "169.254.250.2")
        for command in (["ip", "addr", "add", "169.254.250.2/24", "dev", "eth0"], ["ip", "link", "set", "eth0", "up"],
                        ["ip", "route", "add", NET.format(247), "via", "169.254.250.1"]):
            subprocess.run(["ip", "netns", "exec", upstream, *command], check=True)
        yield first, second, upstream
    finally:
        for stand_in in stand_ins:
            stand_in.remove()
        subprocess.run(["ip", "netns", "del", upstream], capture_output=True)
        in_host(lab_cluster, "hv1", "ip", "route", "del", "default", check=False)
        for vm in ("webvm", "dbvm"):
            pvc(lab_cluster, "vm", "remove", vm, "--yes", "--wait")
        removed = pvc(lab_cluster, "network", "remove", "4700", "--yes")
        # The next test's stand-ins plug into the bridges its VMs make: not into these, which go on a later pass.
        assert eventually(lambda: not any("pvcbr4700" in made for made in every_nodes_devices(lab_cluster).values()),
                          10), every_nodes_devices(lab_cluster)
    assert removed.exit_code == 0, f"a network with recorded leases was not removed: {removed.output}"


def test_the_router_serves_leases_names_and_a_way_out(lab_cluster, served_network):
    first, second, upstream = served_network
    address = first.lease()
    assert 100 <= int(address.rsplit(".", 1)[1]) <= 150, f"{address} is outside the DHCP range"
    ok(pvc(lab_cluster, "network", "dhcp", "add", "svc", "169.254.247.77", second.mac, "dbhost"))
    assert eventually(lambda: second.lease() == "169.254.247.77", 10), "the reservation was not honoured"
    assert second.run("ping", "-c", "1", "-W", "2", address, check=False).count("1 received") == 1
    assert first.run("ping", "-c", "1", "-W", "2", "169.254.247.1", check=False).count("1 received") == 1
    assert first.resolves("dbhost.svc.test", "169.254.247.1") == "169.254.247.77"
    assert eventually(lambda: second.resolves("webvm", "169.254.247.1") == address, 5), \
        "a VM's name does not resolve to its NIC's lease"
    assert eventually(lambda: "inet6 fd00:247::" in first.run("ip", "-6", "addr", "show", "dev", "eth0"), 15), \
        "no IPv6 address from the router's advertisements"

    def recorded():
        return {row["mac"]: (row["ip"], row["hostname"], row["reserved"]) for row in json.loads(ok(pvc(
            lab_cluster, "network", "dhcp", "list", "4700", "--format", "json")))}
    assert eventually(lambda: recorded() == {first.mac: (address, "webvm", False),
                                             second.mac: ("169.254.247.77", "dbhost", True)}, 5), recorded()

    # Out through the router's upstream, masqueraded; nothing leaves the upstream namespace.
    subprocess.run(["ip", "netns", "exec", upstream, "nft", "-f", "-"], check=True, text=True, input=(
        "table ip watch {\n chain in {\n  type filter hook prerouting priority 0;\n"
        "  ip saddr 169.254.250.1 ip daddr 169.254.251.9 counter\n }\n}\n"))
    assert first.run("ping", "-c", "1", "-W", "2", "169.254.250.2", check=False).count("1 received") == 1
    assert "1 received" not in first.run("ping", "-c", "2", "-W", "1", "169.254.251.9", check=False)
    counted = subprocess.run(["ip", "netns", "exec", upstream, "nft", "list", "table", "ip", "watch"],
                             capture_output=True, text=True).stdout
    assert "packets 2 " in counted, f"the guest's packets did not reach the upstream masqueraded: {counted}"


def test_a_removed_reservation_or_vm_frees_its_address(lab_cluster, served_network):
    first, second, _upstream = served_network

    def recorded():
        return {row["mac"]: row["ip"] for row in json.loads(ok(pvc(
            lab_cluster, "network", "dhcp", "list", "4700", "--format", "json")))}
    ok(pvc(lab_cluster, "network", "dhcp", "add", "svc", "169.254.247.77", second.mac))
    assert eventually(lambda: second.lease() == "169.254.247.77", 10), "the reservation was not honoured"
    assert eventually(lambda: recorded().get(second.mac) == "169.254.247.77", 5), recorded()
    ok(pvc(lab_cluster, "network", "dhcp", "remove", "svc", second.mac))
    assert eventually(lambda: "169.254.247.77" not in recorded().values(), 10), \
        f"the removed reservation's address is still recorded as leased: {recorded()}"
    ok(pvc(lab_cluster, "network", "dhcp", "add", "svc", "169.254.247.77", first.mac))
    assert eventually(lambda: first.lease() == "169.254.247.77", 10), \
        "the freed address was not handed to the MAC now reserving it"

    dynamic = second.lease()
    assert eventually(lambda: recorded().get(second.mac) == dynamic, 5), recorded()
    ok(pvc(lab_cluster, "vm", "remove", "dbvm", "--yes", "--wait"))
    assert eventually(lambda: second.mac not in recorded(), 10), \
        f"the removed VM's lease of {dynamic} is still recorded: {recorded()}"


def test_an_acl_blocks_a_port_until_removed_and_bad_rules_are_refused(lab_cluster, served_network):
    first, _second, upstream = served_network
    address = first.lease()
    listener = subprocess.Popen(["ip", "netns", "exec", first.netns, sys.executable, "-c", LISTENER],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout.readline().strip() == "ready"
        outside = lambda: subprocess.run(["ip", "netns", "exec", upstream, "timeout", "1", "bash", "-c",
                                          f"exec 3<>/dev/tcp/{address}/7999"], capture_output=True).returncode == 0
        assert eventually(outside, 5), "the guest cannot be reached through the router"
        before = ok(pvc(lab_cluster, "network", "acl", "list", "4700", "--format", "json"))
        devices, ruleset = every_nodes_devices(lab_cluster), in_host(lab_cluster, "hv1", "nft", "list", "ruleset")
        assert "ACL rule refused by nft: syntax error" in refused(pvc(
            lab_cluster, "network", "acl", "add", "4700", "typo", "--direction", "in", "--rule", "tcp dport 79x9 drop"))
        assert "ACL rule refused: it holds a ';'" in refused(pvc(
            lab_cluster, "network", "acl", "add", "4700", "evil", "--direction", "in", "--rule",
            "accept; flush ruleset"))
        assert "closes what the rule did not open" in refused(pvc(
            lab_cluster, "network", "acl", "add", "4700", "evil", "--direction", "in", "--rule",
            "accept } } table inet x { chain y { accept"))
        assert ok(pvc(lab_cluster, "network", "acl", "list", "4700", "--format", "json")) == before
        time.sleep(0.5)  # a pass of the router
        assert in_host(lab_cluster, "hv1", "nft", "list", "ruleset") == ruleset, "refused rules changed no table"
        assert every_nodes_devices(lab_cluster) == devices

        ok(pvc(lab_cluster, "network", "acl", "add", "4700", "no-7999", "--direction", "in", "--order", "10",
               "--rule", "tcp dport 7999 drop"))
        assert eventually(lambda: not outside(), 5), "the ACL did not block the port"
        assert first.run("ping", "-c", "1", "-W", "2", "169.254.250.2", check=False).count("1 received") == 1
        ok(pvc(lab_cluster, "network", "acl", "remove", "4700", "no-7999"))
        assert eventually(outside, 5), "removing the ACL did not unblock the port"
    finally:
        listener.kill()
        listener.wait()


def test_the_provisioner_gives_a_templates_networks_nics_macs_and_reservations(lab_cluster):
    ok(pvc(lab_cluster, "network", "add", "4702", "-p", "managed", "-d", "prov", "--ipv4", NET.format(252),
           "--gateway4", "169.254.252.1", "--dhcp4", "169.254.252.100-169.254.252.200"))
    ok(pvc(lab_cluster, "network", "add", "4703", "-p", "managed", "-d", "noaddr"))
    client = lab_cluster.client
    client.storage.pool_add("netpool")
    try:
        client.provisioner.template_add("system", "netsys", {"vcpus": 1, "memory_mib": 64})
        client.provisioner.template_add("storage", "netdisk", {"disks": [{"pool": "netpool", "size": "1M"}]})
        client.provisioner.template_add("network", "netnics", {"nics": [{"bridge": "lanbr0"}]})
        assert "no network 4799" in refused(pvc(lab_cluster, "provisioner", "template", "network", "vni", "add",
                                                "netnics", "4799"))
        ok(pvc(lab_cluster, "provisioner", "template", "network", "vni", "add", "netnics", "noaddr",
               "--dhcp-reservation"))
        ok(pvc(lab_cluster, "provisioner", "profile", "add", "netprof", "--system-template", "netsys",
               "--storage-template", "netdisk", "--network-template", "netnics"))
        assert "network 4703 has no IPv4 subnet PVC serves" in refused(pvc(
            lab_cluster, "provisioner", "create", "provvm", "netprof", "--wait"))
        assert "provvm" not in ok(pvc(lab_cluster, "vm", "list"))
        ok(pvc(lab_cluster, "provisioner", "template", "network", "vni", "remove", "netnics", "4703"))
        ok(pvc(lab_cluster, "provisioner", "template", "network", "vni", "add", "netnics", "prov",
               "--dhcp-reservation"))
        assert "has a NIC on network 4702 already" in refused(pvc(
            lab_cluster, "provisioner", "template", "network", "vni", "add", "netnics", "4702"))

        ok(pvc(lab_cluster, "provisioner", "create", "provvm", "netprof", "--wait"))
        nics = client.vms.info("provvm")["nics"]
        assert [(nic["type"], nic["source"]) for nic in nics] == [("bridge", "lanbr0"), ("network", "4702")]
        assert all(nic["mac"] and nic["mac"].startswith("52:54:00:") for nic in nics)
        assert json.loads(ok(pvc(lab_cluster, "network", "info", "4702", "--format", "json")))["used_by"] == \
            ["provvm"]
        reserved = json.loads(ok(pvc(lab_cluster, "network", "dhcp", "list", "prov", "--format", "json")))
        assert [(row["mac"], row["ip"], row["hostname"], row["reserved"]) for row in reserved] == \
            [(nics[1]["mac"], "169.254.252.2", "provvm", True)]
    finally:
        pvc(lab_cluster, "vm", "remove", "provvm", "--yes", "--wait")
        pvc(lab_cluster, "provisioner", "profile", "remove", "netprof")
        for kind, name in (("system", "netsys"), ("storage", "netdisk"), ("network", "netnics")):
            pvc(lab_cluster, "provisioner", "template", kind, "remove", name)
        pvc(lab_cluster, "storage", "pool", "remove", "netpool", "--force", "--yes")
        for vni in ("4702", "4703"):
            pvc(lab_cluster, "network", "remove", vni, "--yes")


def test_a_flushed_router_hands_its_services_over_once_stopped(lab_cluster):
    """Last in the module: the router moves to hv2 and stays there."""
    ok(pvc(lab_cluster, "network", "add", "4701", "-p", "managed", "--ipv4", NET.format(248), "--gateway4",
           "169.254.248.1"))
    try:
        assert eventually(lambda: "169.254.248.1/24" in in_host(lab_cluster, "hv1", "ip", "-o", "addr"), 5)
        ok(pvc(lab_cluster, "node", "flush", "hv1", "--wait"))
        assert eventually(lambda: json.loads(ok(pvc(lab_cluster, "network", "info", "4701", "--format",
                                                    "json")))["router"] == "hv2", 10)
        assert eventually(lambda: "169.254.248.1/24" in in_host(lab_cluster, "hv2", "ip", "-o", "addr"), 5)
        assert "169.254.248.1/24" not in in_host(lab_cluster, "hv1", "ip", "-o", "addr")
        assert "pvc_router" not in in_host(lab_cluster, "hv1", "nft", "list", "tables")
        hv1_dnsmasq = str(lab_cluster.local._daemon_dir("nodes", "hv1") / "networks" / "dnsmasq-4701.conf")
        assert hv1_dnsmasq not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    finally:
        pvc(lab_cluster, "node", "ready", "hv1", "--wait")
        pvc(lab_cluster, "network", "remove", "4701", "--yes")
