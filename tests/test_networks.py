"""Client networks: records checked in one place and refused whole on bad input, VMs naming networks by VNI or
description, and a network in use kept; on a lab cluster, whose hosts each live in a network namespace."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest

from conftest import RunningCluster, started_cluster
from vm_support import pvc

NET = "169.254.{}.0/24"


@pytest.fixture(scope="module")
def lab_cluster(tmp_path_factory) -> Iterator[RunningCluster]:
    """Two test-driver hosts, each pvcnoded and libvirtd in its own lab namespace."""
    yield from started_cluster(Path(tmp_path_factory.mktemp("networks")), nodes=2, coordinators=1, lab=True)


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
                       "ipv6_network": "fd00:210::/64", "ipv6_gateway": "fd00:210::1", "used_by": []}
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
        before = stored_networks(lab_cluster)
        assert reason in refused(pvc(lab_cluster, "network", "add", *arguments))
        assert stored_networks(lab_cluster) == before
    finally:
        ok(pvc(lab_cluster, "network", "remove", "4199", "--yes"))


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
        ok(pvc(lab_cluster, "vm", "remove", "netvm1", "--yes", "--wait"))
        ok(pvc(lab_cluster, "network", "remove", "4300", "--yes"))
    finally:
        pvc(lab_cluster, "vm", "remove", "netvm1", "--yes", "--wait")
        for vni in ("4300", "230"):
            pvc(lab_cluster, "network", "remove", vni, "--yes")
