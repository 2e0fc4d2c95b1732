"""Real guests on a managed network: QEMU hosts each in its own lab namespace, guests that take their leases with
udhcpc from the router's dnsmasq across the VXLAN overlay, reach each other and the gateway, resolve each other's
names, and keep their address and a TCP connection through a live migration.

What the guests can reach and resolve is asked of the guests themselves (their probe port, `guest` module); the
asking is done from the router's namespace, which holds the gateway address on the network's bridge.
"""
from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import libvirt
import pytest

from conftest import RunningCluster, started_cluster
from guest_support import console_text
from helpers import cluster_store, eventually
from pvc import schema
from pvc.cli.localcluster.guest import domain_xml, parse_leases
from pvc.node_stats_fields import INTERFACE_FIELDS, VM_FIELDS
from test_network_router import RouterRecords
from test_networks import NET, ok, pvc, route_on
from test_self_fencing import DaemonStates

LEASE_TIMEOUT_S = 90

ASK = """
import socket, sys, time
deadline = time.monotonic() + 10
while True:
    try:
        connection = socket.create_connection((sys.argv[1], 8), timeout=10)
        break
    except ConnectionRefusedError:  # the guest prints its lease a moment before its probe port listens
        if time.monotonic() > deadline:
            raise
        time.sleep(0.2)
with connection:
    connection.sendall((sys.argv[2] + "\\n").encode())
    print(connection.makefile().readline().strip())
"""

ECHO_CLIENT = """
import socket, sys
connection = socket.create_connection((sys.argv[1], 7), timeout=30)
reader = connection.makefile()
print("connected", flush=True)
for line in sys.stdin:
    connection.sendall(line.encode())
    print(reader.readline().strip(), flush=True)
"""


@pytest.fixture(scope="module")
def guest_lab(tmp_path_factory) -> Iterator[RunningCluster]:
    """Three QEMU hosts on a lab; hv1 routes managed network 4900 (domain lab.test), guests g1 on hv2 and g2 on
    hv3 booted on it."""
    cluster_dir = Path(tmp_path_factory.mktemp("netguests"))
    for cluster in started_cluster(cluster_dir, nodes=3, coordinators=1, hypervisor="qemu", lab=True):
        ok(pvc(cluster, "network", "add", "4900", "-p", "managed", "-d", "guests", "--domain", "lab.test",
               "--ipv4", NET.format(249), "--gateway4", "169.254.249.1", "--dhcp4",
               "169.254.249.100-169.254.249.150"))
        route_on(cluster, "hv1")
        started = {}
        for vm, node in (("g1", "hv2"), ("g2", "hv3")):
            ok(pvc(cluster, "vm", "define", "-", "--target", node, input=domain_xml(vm, networks=("guests",))))
            started[vm] = time.monotonic()
            ok(pvc(cluster, "vm", "start", vm))
        cluster.lease_seconds = {vm: lease_of(cluster, vm, node, started[vm]) for vm, node in
                                 (("g1", "hv2"), ("g2", "hv3"))}
        yield cluster


def lease_of(cluster, vm: str, node: str, since: float | None = None):
    found = eventually(lambda: parse_leases(console_text(cluster, vm, node)), LEASE_TIMEOUT_S, 0.2)
    assert found, f"{vm} took no lease; its console ends:\n" + console_text(cluster, vm, node)[-600:]
    return time.monotonic() - since if since is not None else found[-1]


def address(cluster, vm: str) -> str:
    """The guest's address, from its leases on the consoles of every node: a guest that migrated shows none on
    its new node's console until its next renewal, up to a minute later."""
    def leases() -> list:
        return [lease for node in cluster.local.node_names for lease in parse_leases(console_text(cluster, vm, node))]
    found = eventually(leases, LEASE_TIMEOUT_S, 0.2)
    assert found, f"{vm} took no lease"
    return found[-1].address


def ask(cluster, guest_address: str, question: str, router: str = "hv1") -> str:
    """Ask a guest (from the router's namespace): ``ping ADDRESS`` or ``resolve NAME``."""
    result = subprocess.run(cluster.local.lab.command(router, [sys.executable, "-c", ASK, guest_address, question]),
                            capture_output=True, text=True, timeout=30)
    return result.stdout.strip() or result.stderr.strip()


def test_guests_on_two_hosts_get_leases_reach_each_other_and_resolve_names(guest_lab):
    first, second = address(guest_lab, "g1"), address(guest_lab, "g2")
    for lease in (lease_of(guest_lab, "g1", "hv2"), lease_of(guest_lab, "g2", "hv3")):
        assert 100 <= int(lease.address.rsplit(".", 1)[1]) <= 150 and lease.prefix == 24
        assert (lease.router, lease.dns) == ("169.254.249.1", "169.254.249.1")
    print("\nvm start to lease: " + ", ".join(f"{vm} {seconds:.1f} s"
                                               for vm, seconds in guest_lab.lease_seconds.items()))
    assert ask(guest_lab, first, f"ping {second}") == f"ok {second}"
    assert ask(guest_lab, second, f"ping {first}") == f"ok {first}"
    assert ask(guest_lab, first, "ping 169.254.249.1") == "ok 169.254.249.1"
    assert ask(guest_lab, first, "resolve g2.lab.test") == f"ok {second}"
    assert ask(guest_lab, second, "resolve g1") == f"ok {first}"


def test_a_live_migration_keeps_the_address_and_a_tcp_connection(guest_lab):
    before = address(guest_lab, "g1")
    lab = guest_lab.local.lab
    echo = subprocess.Popen(lab.command("hv1", [sys.executable, "-c", ECHO_CLIENT, before]), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    pinger = subprocess.Popen(lab.command("hv1", ["ping", "-i", "0.1", "-W", "1", before]),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert echo.stdout.readline().strip() == "connected"
        echo.stdin.write("before\n")
        echo.stdin.flush()
        assert echo.stdout.readline().strip() == "before"
        time.sleep(1)
        ok(pvc(guest_lab, "vm", "migrate", "g1", "--target", "hv3", "--wait"))
        assert guest_lab.client.vms.info("g1")["node"] == "hv3"
        time.sleep(1)
        echo.stdin.write("after\n")
        echo.stdin.flush()
        assert echo.stdout.readline().strip() == "after", "the TCP connection did not survive the migration"
    finally:
        pinger.terminate()
        replies = pinger.communicate(timeout=10)[0]
        echo.kill()
        echo.wait()
    sequences = [int(line.split("icmp_seq=")[1].split()[0]) for line in replies.splitlines() if "icmp_seq=" in line]
    lost = max(sequences) - len(set(sequences)) if sequences else None
    print(f"\nlive migration: {len(set(sequences))} ping replies every 100 ms, {lost} lost")
    assert lost is not None and lost <= 20, replies[-500:]
    assert ask(guest_lab, before, "ping 169.254.249.1") == "ok 169.254.249.1", "the guest lost its address"
    migrated = parse_leases(console_text(guest_lab, "g1", "hv3") + console_text(guest_lab, "g1", "hv2"))
    assert {lease.address for lease in migrated} == {before}


def test_a_guests_network_counters_grow_with_its_traffic_in_its_nodes_statistics_record(guest_lab):
    """200 pings from the router's namespace to g2: its interface's packet counters in its node's statistics
    record (which `/metrics` serves) grow by at least that much each way, and never run ahead of what the host's
    libvirt says."""
    node = guest_lab.client.vms.info("g2")["node"]

    def reading() -> dict[str, int] | None:
        with cluster_store(guest_lab.local) as store:
            record = store.read(schema.node_key(node, "vm_stats")) or {}
        fields = (record.get("vms") or {}).get("g2")
        if not fields or len(fields) <= len(VM_FIELDS) + 1 or not fields[len(VM_FIELDS) + 1]:
            return None
        counters = {field: 0 for field in INTERFACE_FIELDS}
        for numbers in fields[len(VM_FIELDS) + 1].values():
            for field, value in zip(INTERFACE_FIELDS, numbers):
                counters[field] += value
        return {**counters, "time": record["time"], "interfaces": sorted(fields[len(VM_FIELDS) + 1])}

    before = eventually(reading, timeout=20)
    assert before, f"no interface statistics of g2 in {node}'s record"
    pings = subprocess.run(guest_lab.local.lab.command("hv1", ["ping", "-q", "-c", "200", "-i", "0.01", "-W", "1",
                                                               address(guest_lab, "g2")]),
                           capture_output=True, text=True, timeout=60)
    pinged_at = time.time()
    assert " 0% packet loss" in pings.stdout, pings.stdout + pings.stderr
    # Only a record sampled after the last reply counts: one sampled mid-run can already show 200 more packets
    # received (the guest's own ARP and router traffic besides the pings) with the last replies not yet sent. Its
    # time is written after libvirt answered, so half a second past the end leaves room for the sampling itself.
    after = eventually(lambda: (lambda now: now if now and now["time"] >= pinged_at + 0.5 else None)(reading()),
                       timeout=20)
    assert after, (before, reading())
    assert after["receive_packets"] >= before["receive_packets"] + 200, (before, after)
    assert after["transmit_packets"] >= before["transmit_packets"] + 200, (before, after)
    assert after["receive_bytes"] >= before["receive_bytes"] + 200 * 84, "an ICMP echo carries at least 84 bytes"
    connection = libvirt.open(guest_lab.local.host(node).uri)
    try:
        domain = connection.lookupByName("g2")
        host = [sum(column) for column in zip(*(domain.interfaceStats(device) for device in after["interfaces"]))]
    finally:
        connection.close()
    # virDomainInterfaceStats: rx bytes, rx packets, rx errs, rx drop, tx bytes, tx packets, tx errs, tx drop
    assert after["receive_packets"] <= host[1] and after["transmit_packets"] <= host[5], (after, host)

    def scraped(family: str) -> float:
        text = urllib.request.urlopen(f"http://{guest_lab.local.metrics_targets[0]}/metrics", timeout=10).read()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.decode().splitlines()
                   if line.startswith(family + "{") and 'vm="g2"' in line)
    assert eventually(lambda: scraped("pvc_vm_network_receive_packets_total") >= after["receive_packets"], 10), \
        "the coordinator's /metrics serves the node's record"


def test_a_nic_on_a_network_is_hot_plugged_into_its_bridge(guest_lab):
    node = guest_lab.client.vms.info("g2")["node"]
    added = ok(pvc(guest_lab, "vm", "network", "add", "g2", "guests", "--type", "network", "-a", "52:54:00:49:00:02"))
    assert added.strip().endswith("applied live"), added
    connection = libvirt.open(guest_lab.local.host(node).uri)
    try:
        live = connection.lookupByName("g2").XMLDesc()
    finally:
        connection.close()
    second = live.split("52:54:00:49:00:02")[0].rsplit("<interface", 1)[1]
    assert "type='bridge'" in second and "pvcbr4900" in live.split("52:54:00:49:00:02")[1].split("</interface>")[0]


@pytest.fixture
def outside(guest_lab) -> Iterator[str]:
    """A namespace behind the router (hv1's upstream side, 169.254.252.0/24) standing for the world outside the
    network: it reaches the guests only through the router's forwarding, where the network's ACLs apply."""
    lab = guest_lab.local.lab
    name = f"{lab.prefix}-out"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for argv in (["ip", "link", "add", "outside0", "type", "veth", "peer", "name", "eth0", "netns", name],
                     ["ip", "addr", "add", "169.254.252.1/24", "dev", "outside0"],
                     ["ip", "link", "set", "outside0", "up"]):
            subprocess.run(lab.command("hv1", argv), check=True, capture_output=True)
        for argv in (["ip", "addr", "add", "169.254.252.2/24", "dev", "eth0"], ["ip", "link", "set", "eth0", "up"],
                     ["ip", "route", "add", NET.format(249), "via", "169.254.252.1"]):
            subprocess.run(["ip", "netns", "exec", name, *argv], check=True, capture_output=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_an_acl_blocks_a_port_of_a_real_guest_until_removed(guest_lab, outside):
    """An inbound rule on the network drops connections to the guest's echo port from outside, at the router,
    while the guest still answers pings; removing the rule lets them through again."""
    guest = address(guest_lab, "g1")

    def connects() -> bool:
        return subprocess.run(["ip", "netns", "exec", outside, "timeout", "2", "bash", "-c",
                               f"exec 3<>/dev/tcp/{guest}/7"], capture_output=True).returncode == 0

    def pings() -> bool:
        return subprocess.run(["ip", "netns", "exec", outside, "ping", "-c", "1", "-W", "2", guest],
                              capture_output=True).returncode == 0
    assert eventually(connects, 10), "the guest's echo port cannot be reached through the router"
    ok(pvc(guest_lab, "network", "acl", "add", "4900", "no-echo", "--direction", "in", "--order", "10",
           "--rule", "tcp dport 7 drop"))
    try:
        assert eventually(lambda: not connects(), 10), "the ACL did not block the guest's port"
        assert pings(), "the rule dropped more than its port"
    finally:
        ok(pvc(guest_lab, "network", "acl", "remove", "4900", "no-echo"))
    assert eventually(connects, 10), "removing the ACL did not unblock the guest's port"


def test_a_killed_router_hands_over_after_its_fence_and_a_real_guest_renews_its_address(guest_lab):
    """Last in the module: hv1, the router, loses its power (its daemon killed, its link cut). Its services
    move to another router node only once it is fenced; the guest's gateway answers again, the new router starts
    with the old leases, and the guest's next renewal keeps its address (asked for at once: udhcpc's own comes
    at half its two-minute lease)."""
    local = guest_lab.local
    node = guest_lab.client.vms.info("g1")["node"]
    guest = address(guest_lab, "g1")
    leases_before = len(parse_leases(console_text(guest_lab, "g1", node)))
    with cluster_store(local) as store:
        states, routers = DaemonStates(store, "hv1"), RouterRecords(store)
        local.stop_daemon("pvcnoded", "hv1", kill=True)
        local.cut_link("hv1")
        cut_at = time.time()
        successor = eventually(lambda: next((name for name in ("hv2", "hv3") if routers.when(name)), None), 60, 0.2)
        assert successor, f"no router after hv1: {routers.seen}"
        gateway = "ok 169.254.249.1"
        assert eventually(lambda: ask(guest_lab, guest, "ping 169.254.249.1", successor) == gateway, 30, 0.2), \
            "the guest's gateway never answered again"
        answered_after = time.time() - cut_at
        fenced_at, moved_at = states.when("fenced"), routers.when(successor)
    assert fenced_at is not None and moved_at >= fenced_at, \
        f"{successor} took over before hv1 was fenced: {states.seen}, {routers.seen}"
    print(f"\nreal guest's gateway answering again {answered_after:.1f} s after the router's power cut "
          f"({moved_at - fenced_at:.2f} s after its fence)")
    lease_file = local._daemon_dir("nodes", successor) / "networks" / "dnsmasq-4900.leases"
    assert f" {guest} " in lease_file.read_text(), "the new router did not start with the guest's lease"
    assert ask(guest_lab, guest, "renew now", successor) == "ok renew"
    renewed = eventually(lambda: parse_leases(console_text(guest_lab, "g1", node))[leases_before:], 30, 0.5)
    assert renewed and renewed[0].address == guest, f"the renewal gave {renewed}, not {guest}"
