"""Benchmark of the cluster core: prints figures, asserts no timings. Run with `pytest -m bench -s`."""
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pvc import schema
from pvc.cli.localcluster.cluster import KEEPALIVE_INTERVAL

from helpers import cluster_store, eventually

pytestmark = pytest.mark.bench

FAKE_NODES = 97


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def register_fake_nodes(store, count: int) -> None:
    """Node records as pvcnoded writes them, with a fresh keepalive of realistic figures."""
    for index in range(count):
        name = f"fake{index:03d}"
        facts = {"cpus": 32, "memory_total_mib": 262144, "libvirt_version": "9.0.0", "hypervisor": "QEMU",
                 "simulated": False, "agent_uri": f"PYRO:pvc.node@10.0.{index // 250}.{index % 250}:7371",
                 "keepalive_interval": 3600, "libvirt_uri": "qemu:///system", "migration_uri": None,
                 "bmc": {"host": None, "port": 623}}
        keepalive = {"time": time.time(), "memory_free_mib": 131072, "memory_allocated_mib": 120000,
                     "memory_provisioned_mib": 140000, "vcpus_allocated": 60, "vms_running": 24,
                     "vms_defined": 26, "load": 7.5}
        store.transaction() \
            .create(schema.node(name), facts) \
            .create(schema.node_key(name, "daemon_state"), "run") \
            .create(schema.node_key(name, "domain_state"), "ready") \
            .create(schema.node_key(name, "keepalive"), keepalive) \
            .commit()


def test_bench_core(cluster):
    with cluster_store(cluster.local) as store:
        register_fake_nodes(store, FAKE_NODES)
    total = FAKE_NODES + len(cluster.local.node_names)
    assert eventually(lambda: len(cluster.client.nodes.list()) == total, timeout=30)

    for _ in range(10):
        cluster.client.nodes.list()
    round_trips = []
    for _ in range(200):
        started = time.perf_counter()
        cluster.client.nodes.list()
        round_trips.append((time.perf_counter() - started) * 1000)

    pvc = str(Path(sys.executable).with_name("pvc"))
    env = {**os.environ, "PVC_CONFIG": str(cluster.local.client_config)}
    walls = []
    for _ in range(5):
        started = time.perf_counter()
        subprocess.run([pvc, "node", "list"], env=env, check=True, capture_output=True)
        walls.append(time.perf_counter() - started)

    time.sleep(3 * KEEPALIVE_INTERVAL)
    node_daemons = [rss_mib(cluster.local.daemon_pid("pvcnoded", name)) for name in cluster.local.node_names]
    hosts = [(rss_mib(cluster.local.host(name).pid), rss_mib(cluster.local.host(name).holder_pid))
             for name in cluster.local.node_names]
    coordinator = rss_mib(cluster.local.daemon_pid("pvcapid", "pvcapid1"))

    print()
    print(f"nodes.list() with {total} nodes: median {statistics.median(round_trips):.2f} ms, "
          f"p90 {statistics.quantiles(round_trips, n=10)[-1]:.2f} ms over {len(round_trips)} calls")
    print(f"pvc node list ({total} nodes) wall time: median {statistics.median(walls) * 1000:.0f} ms, "
          f"min {min(walls) * 1000:.0f} ms over {len(walls)} runs")
    print(f"pvcnoded idle RSS: {', '.join(f'{rss:.1f}' for rss in node_daemons)} MiB")
    print("simulated host idle RSS (libvirtd + holder): "
          + ", ".join(f"{daemon:.1f} + {holder:.1f} = {daemon + holder:.1f}" for daemon, holder in hosts) + " MiB")
    print(f"pvcapid RSS with {total} nodes cached: {coordinator:.1f} MiB")
