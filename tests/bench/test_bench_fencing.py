"""Benchmarks of node failure: `kill -9` of a node daemon until all its VMs run elsewhere, split into detection
(kill → recover task recorded), fence (IPMI, confirmed off) and recovery (VMs restarted elsewhere). Prints
figures, asserts no timings. Run with `pytest -m bench -s tests/bench/test_bench_fencing.py`.

Both use the local cluster's defaults (keepalive 1 s, fence after 4 missed, leader tick 0.5 s).
"""
import time

import pytest

from pvc.cli.localcluster.cluster import FENCE_INTERVALS, KEEPALIVE_INTERVAL

from conftest import started_cluster
from guest_support import boot_guests, wait_heartbeat
from helpers import eventually
from vm_support import running_hosts, vm_xml

pytestmark = pytest.mark.bench

VMS = 50


def _recovered(client, node: str, timeout: float) -> dict:
    found = eventually(lambda: (lambda recovery: recovery if recovery and recovery["state"] in ("done", "failed")
                                else None)(client.nodes.info(node)["recovery"]), timeout, interval=0.05)
    assert found, client.nodes.info(node)
    return found


def _report(label: str, killed_at_wall: float, killed_at: float, recovery: dict, task: dict, all_running: float):
    detection = task["created"] - killed_at_wall
    print(f"\n[bench fencing] {label}: kill -9 → all VMs running elsewhere {all_running - killed_at:.2f} s"
          f" = detection {detection:.2f} s (deadline {FENCE_INTERVALS * KEEPALIVE_INTERVAL:g} s + leader tick)"
          f" + fence {recovery['fence_s']:.2f} s + recovery {recovery['recovery_s']:.2f} s"
          f" (+ {all_running - killed_at - detection - recovery['fence_s'] - recovery['recovery_s']:.2f} s"
          f" until seen running); outcome {recovery['state']}, {len(recovery['moved'])} restarted")


def test_bench_kill_a_node_daemon_with_50_vms(tmp_path_factory):
    for cluster in started_cluster(tmp_path_factory.mktemp("bench-fence"), nodes=3, coordinators=1):
        client, local = cluster.client, cluster.local
        names = [f"victim{index:02d}" for index in range(VMS)]
        for name in names:
            client.vms.define(vm_xml(name, memory_mib=256), target="hv1")
            client.vms.start(name)
        assert eventually(lambda: len(running_hosts(cluster)) == VMS, 60)

        killed_at_wall, killed_at = time.time(), time.monotonic()
        local.stop_daemon("pvcnoded", "hv1", kill=True)
        recovery = _recovered(client, "hv1", 120)
        assert eventually(lambda: all(hosts in (["hv2"], ["hv3"]) for hosts in running_hosts(cluster).values())
                          and len(running_hosts(cluster)) == VMS, 120, interval=0.05)
        all_running = time.monotonic()
        _report(f"{VMS} test-driver VMs", killed_at_wall, killed_at, recovery,
                client.nodes.task(recovery["id"]), all_running)


def test_bench_kill_a_node_daemon_with_3_real_guests(tmp_path_factory):
    for cluster in started_cluster(tmp_path_factory.mktemp("bench-fence-qemu"), nodes=3, coordinators=1,
                                  hypervisor="qemu"):
        client, local = cluster.client, cluster.local
        names = ["real1", "real2", "real3"]
        boots = boot_guests(cluster, "hv1", names)

        killed_at_wall, killed_at = time.time(), time.monotonic()
        local.stop_daemon("pvcnoded", "hv1", kill=True)
        recovery = _recovered(client, "hv1", 120)
        all_running = time.monotonic()
        for name in names:
            node = client.vms.info(name)["node"]
            beat = wait_heartbeat(cluster, name, node)
            assert beat.boot_id != boots[name].boot_id
        first_heartbeats = time.monotonic()
        _report("3 real QEMU guests", killed_at_wall, killed_at, recovery, client.nodes.task(recovery["id"]),
                all_running)
        print(f"[bench fencing] 3 real QEMU guests: kill -9 → every guest's first heartbeat elsewhere "
              f"{first_heartbeats - killed_at:.2f} s")
