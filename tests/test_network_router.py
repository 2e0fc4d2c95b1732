"""The router's services move only once the old router is fenced: a router node killed, and a router cut off by
a partition (still running, still serving on its side), on lab clusters of their own. A stand-in guest on a
third host keeps its address across the move, and the new router starts from the leases in ZooKeeper."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import cluster_store, eventually
from pvc import schema
from test_networks import DHCP_SCRIPT, NET, StandIn, nic_xml, ok, pvc, pvc_devices, route_on
from test_self_fencing import DaemonStates


class RouterRecords:
    """Every value of the router record, with ZooKeeper's own time of the write."""

    def __init__(self, store):
        self.seen: list[tuple[str | None, float]] = []
        store.zk.DataWatch(schema.NETWORK_ROUTER, self._on_change)

    def _on_change(self, data, stat, _event=None) -> None:
        if data is not None:
            self.seen.append(((schema.decode(data) or {}).get("node"), stat.mtime / 1000))

    def when(self, node: str) -> float | None:
        return next((at for value, at in self.seen if value == node), None)


@pytest.fixture
def routed(fresh_cluster, tmp_path):
    """Managed network 4800 routed by hv1, a stand-in guest on hv3 holding a lease from it."""
    script = tmp_path / "udhcpc.sh"
    script.write_text(DHCP_SCRIPT)
    script.chmod(0o755)
    route_on(fresh_cluster, "hv1")
    ok(pvc(fresh_cluster, "network", "add", "4800", "-p", "managed", "--ipv4", NET.format(248), "--gateway4",
           "169.254.248.1", "--dhcp4", "169.254.248.100-169.254.248.150"))
    guest = StandIn(fresh_cluster, "g1", "hv3", script)
    try:
        xml = nic_xml("routed1", "4800").replace("<interface type='network'>",
                                                 f"<interface type='network'><mac address='{guest.mac}'/>")
        ok(pvc(fresh_cluster, "vm", "define", "-", "--target", "hv3", input=xml))
        assert eventually(lambda: "pvcbr4800" in pvc_devices(fresh_cluster, "hv3"), 10)
        guest.plug("pvcbr4800")
        assert ok(pvc(fresh_cluster, "network", "info", "4800")).count("Router:       hv1") == 1
        yield fresh_cluster, guest, guest.lease()
    finally:
        guest.remove()


def gateway_answers(guest: StandIn) -> bool:
    return "1 received" in guest.run("ping", "-c", "1", "-W", "1", "169.254.248.1", check=False)


def renew(guest: StandIn, address: str) -> str:
    """What a guest asking for its old address again is given (udhcpc's request, as at a renewal)."""
    out = guest.run("busybox", "udhcpc", "-i", "eth0", "-s", str(guest.script), "-f", "-q", "-n", "-t", "5",
                    "-T", "1", "-r", address, timeout=30)
    return out.split("lease ", 1)[1].split("/", 1)[0]


def move_and_watch(cluster, guest: StandIn, address: str, fault) -> None:
    local = cluster.local
    with cluster_store(local) as store:
        states, routers = DaemonStates(store, "hv1"), RouterRecords(store)
        assert eventually(lambda: address in str(store.read(schema.network_leases(4800))), 10)
        fault()
        faulted_at = time.time()
        assert eventually(lambda: gateway_answers(guest), 60, 0.1), "the gateway never answered again"
        answered_after = time.time() - faulted_at
        fenced_at, moved_at = states.when("fenced"), routers.when("hv2")
    assert fenced_at is not None and moved_at is not None, (states.seen, routers.seen)
    assert moved_at >= fenced_at, f"hv2 took over {fenced_at - moved_at:.2f} s before hv1 was fenced"
    print(f"\ngateway answering again {answered_after:.1f} s after the fault "
          f"({moved_at - fenced_at:.2f} s after the fence)")
    def new_routers_leases() -> str:
        return subprocess.run(local.lab.command("hv2", ["cat", str(_lease_file(local))]), capture_output=True,
                              text=True).stdout
    # The gateway address comes first (dnsmasq binds to it), its dnsmasq a moment later.
    assert eventually(lambda: f" {address} " in new_routers_leases(), 5), \
        f"the new router did not start with the old lease: {new_routers_leases()!r}"
    assert renew(guest, address) == address, "a renewal did not keep the address"


def _lease_file(local):
    return local._daemon_dir("nodes", "hv2") / "networks" / "dnsmasq-4800.leases"


@pytest.mark.cluster(nodes=3, lab=True)
def test_a_killed_router_is_replaced_only_after_its_fence(routed):
    cluster, guest, address = routed

    def power_cut() -> None:
        """A dead host answers nothing: its daemon killed and its link gone, as in a power cut."""
        cluster.local.stop_daemon("pvcnoded", "hv1", kill=True)
        cluster.local.cut_link("hv1")
    move_and_watch(cluster, guest, address, power_cut)


@pytest.mark.cluster(nodes=3, lab=True)
def test_a_router_cut_off_by_a_partition_is_replaced_only_after_its_fence(routed):
    cluster, guest, address = routed
    _a_lease_is_recorded_as_it_is_granted(cluster, guest)
    move_and_watch(cluster, guest, address, lambda: cluster.local.cut_link("hv1"))


RELEASE = """
import socket
mac = bytes.fromhex("{mac}".replace(":", ""))
message = (bytes([1, 1, 6, 0]) + bytes(4) + bytes(4) + socket.inet_aton("{address}") + bytes(12) + mac + bytes(10)
           + bytes(192) + bytes([0x63, 0x82, 0x53, 0x63, 53, 1, 7, 54, 4]) + socket.inet_aton("{server}")
           + bytes([61, 7, 1]) + mac + bytes([255]))
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
    sender.bind(("{address}", 68))
    sender.sendto(message, ("{server}", 67))
"""
"""A DHCPRELEASE as a client sends it (busybox udhcpc sends none when it quits)."""


def _a_lease_is_recorded_as_it_is_granted(cluster, guest: StandIn) -> None:
    """dnsmasq's lease script records a lease, not the router's next pass: with the router's libvirtd frozen
    its passes stop (each begins by asking libvirt about its domains), yet a second guest's new lease reaches
    ZooKeeper at once, and its release too."""
    local = cluster.local
    second = StandIn(cluster, "g2", "hv3", guest.script)
    libvirtd = local.host("hv1").pid
    try:
        second.plug("pvcbr4800")
        os.kill(libvirtd, signal.SIGSTOP)
        time.sleep(0.5)  # a pass under way when it froze has finished
        with cluster_store(local) as store:
            def recorded() -> dict:
                return store.read(schema.network_leases(4800)) or {}
            granted = second.lease()
            began = time.monotonic()
            assert eventually(lambda: (recorded().get(second.mac) or {}).get("ip") == granted, 3, 0.02), \
                f"the lease of {granted} was not recorded with the router's passes stalled: {recorded()}"
            print(f"\nlease recorded {time.monotonic() - began:.2f} s after the guest had it, the router's passes "
                  f"stalled")
            second.run(sys.executable, "-c", RELEASE.format(address=granted, mac=second.mac, server="169.254.248.1"))
            assert eventually(lambda: second.mac not in recorded(), 3, 0.02), \
                f"a release is recorded at once too: {recorded()}"
            assert guest.mac in recorded(), "the first guest's lease stays"
    finally:
        os.kill(libvirtd, signal.SIGCONT)
        second.remove()


@pytest.mark.cluster(nodes=3, lab=True)
def test_a_router_cut_off_from_zookeeper_alone_stops_serving_before_its_successor_starts(routed):
    """Its guests still reach it: it must go quiet itself (its self-fence), not only by its fence."""
    cluster, guest, address = routed
    local = cluster.local
    with cluster_store(local) as store:
        states, routers = DaemonStates(store, "hv1"), RouterRecords(store)
        assert eventually(lambda: address in str(store.read(schema.network_leases(4800))), 10)
        local.sever("hv1", local.zookeeper_names)
        assert eventually(lambda: not gateway_answers(guest), 15, 0.1), "the cut-off router kept answering"
        quiet_at = time.time()
        assert eventually(lambda: gateway_answers(guest), 60, 0.1), "the gateway never answered again"
        fenced_at, moved_at = states.when("fenced"), routers.when("hv2")
    assert fenced_at is not None and moved_at is not None and quiet_at <= fenced_at <= moved_at, \
        (quiet_at, states.seen, routers.seen)
    held = subprocess.run(local.lab.command("hv1", ["ip", "-o", "addr"]), capture_output=True, text=True).stdout
    assert "169.254.248.1/" not in held, "the old router still holds the gateway address"
    assert renew(guest, address) == address
