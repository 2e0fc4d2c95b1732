"""Benchmarks of client networks: devices made and removed per second on a node, `vm start` to the guest's
lease (a real guest on a QEMU host in the lab), and a router's death to its gateway answering again. Prints
figures, asserts no timings. Run with `pytest -m bench -s tests/bench/test_bench_networks.py`."""
import subprocess
import sys
import time

import pytest

from conftest import started_cluster
from guest_support import console_text
from helpers import eventually
from pvc.cli.localcluster.guest import domain_xml, parse_leases
from test_network_router import gateway_answers
from test_networks import DHCP_SCRIPT, NET, StandIn, nic_xml, ok, pvc, pvc_devices

pytestmark = pytest.mark.bench

NETWORKS = 100

DEVICES = f"""
import time
from pvc.node.network import devices
started = time.monotonic()
for vni in range(1, {NETWORKS} + 1):
    devices.ensure(vni, "managed", 1450, None, "169.254.99.1", ["169.254.99.2", "169.254.99.3"], devices.links())
made = time.monotonic() - started
started = time.monotonic()
again = sum(len(devices.ensure(vni, "managed", 1450, None, "169.254.99.1", ["169.254.99.2", "169.254.99.3"],
                               devices.links())) for vni in range(1, {NETWORKS} + 1))
checked = time.monotonic() - started
started = time.monotonic()
for vni in range(1, {NETWORKS} + 1):
    devices.remove(vni, devices.links())
removed = time.monotonic() - started
print(made, checked, removed, again)
"""


def test_bench_devices_made_and_removed_per_second():
    namespace = "pvc-bench-devices"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        for command in (["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"],
                        ["ip", "addr", "add", "169.254.99.1/24", "dev", "eth0"], ["ip", "link", "set", "eth0", "up"]):
            subprocess.run(["ip", "netns", "exec", namespace, *command], check=True)
        out = subprocess.run(["ip", "netns", "exec", namespace, sys.executable, "-c", DEVICES], check=True,
                             capture_output=True, text=True).stdout.split()
    finally:
        subprocess.run(["ip", "netns", "del", namespace])
    made, checked, removed, again = float(out[0]), float(out[1]), float(out[2]), int(out[3])
    print(f"\n[bench networks] {NETWORKS} managed networks (bridge + VXLAN + 2 flood entries each): made "
          f"{NETWORKS / made:.1f}/s, checked again (nothing to change: {again} changes) {NETWORKS / checked:.1f}/s, "
          f"removed {NETWORKS / removed:.1f}/s")


def test_bench_vm_start_to_lease(tmp_path_factory):
    for cluster in started_cluster(tmp_path_factory.mktemp("bench-lease"), nodes=2, coordinators=1,
                                   hypervisor="qemu", lab=True):
        ok(pvc(cluster, "network", "add", "4900", "-p", "managed", "--ipv4", NET.format(249), "--gateway4",
               "169.254.249.1", "--dhcp4", "169.254.249.100-169.254.249.150"))
        ok(pvc(cluster, "vm", "define", "-", "--target", "hv2", input=domain_xml("lease1", networks=("4900",))))
        started = time.monotonic()
        ok(pvc(cluster, "vm", "start", "lease1"))
        assert eventually(lambda: "pvc-guest: boot" in console_text(cluster, "lease1", "hv2"), 180, 0.1)
        booted = time.monotonic()
        assert eventually(lambda: parse_leases(console_text(cluster, "lease1", "hv2")), 120, 0.1)
        leased = time.monotonic()
        print(f"\n[bench networks] vm start → lease {leased - started:.1f} s (to the guest's boot line "
              f"{booted - started:.1f} s, boot line → lease {leased - booted:.1f} s; TCG)")


def test_bench_router_death_to_gateway_answering(tmp_path_factory, tmp_path):
    script = tmp_path / "udhcpc.sh"
    script.write_text(DHCP_SCRIPT)
    script.chmod(0o755)
    for cluster in started_cluster(tmp_path_factory.mktemp("bench-router"), nodes=3, coordinators=1, lab=True):
        ok(pvc(cluster, "network", "add", "4800", "-p", "managed", "--ipv4", NET.format(248), "--gateway4",
               "169.254.248.1", "--dhcp4", "169.254.248.100-169.254.248.150"))
        guest = StandIn(cluster, "g1", "hv3", script)
        try:
            ok(pvc(cluster, "vm", "define", "-", "--target", "hv3", input=nic_xml("b1", "4800")))
            assert eventually(lambda: "pvcbr4800" in pvc_devices(cluster, "hv3"), 10)
            guest.plug("pvcbr4800")
            guest.lease()
            cluster.local.stop_daemon("pvcnoded", "hv1", kill=True)
            cluster.local.cut_link("hv1")
            killed = time.monotonic()
            assert eventually(lambda: gateway_answers(guest), 60, 0.05)
            print(f"\n[bench networks] router killed (daemon SIGKILL, link cut) → gateway answering from the "
                  f"next router {time.monotonic() - killed:.1f} s (fence deadline 4 s, then the fence)")
        finally:
            guest.remove()
