"""Benchmarks of virtual machines: prints figures, asserts no timings. Run with `pytest -m bench -s`.

- `vms.list()` with 10,000 VMs recorded, end to end from Python (median ms; target under 300 ms);
- a flush of 100 VMs on simulated hosts (seconds; target under 10 s);
- a selector's choice among 1,000 nodes (µs).
"""
import statistics
import time
import uuid

import pytest
import serpent

from pvc import placement, schema
from pvc.plugins.selectors import pvc_migration_selectors

from helpers import cluster_store, eventually
from vm_support import running_hosts, vm_xml, wait_for_task

pytestmark = pytest.mark.bench

VMS_LISTED = 10_000
VMS_FLUSHED = 100
NODES_RANKED = 1_000


def record_vms(store, count: int, node: str) -> None:
    """VM records as `vms.define` writes them, placed on a node no daemon serves (so nothing converges)."""
    for first in range(0, count, 100):
        transaction = store.transaction()
        for index in range(first, min(first + 100, count)):
            name = f"bench{index:05d}"
            vm_uuid = str(uuid.uuid4())
            spec = {"name": name, "uuid": vm_uuid, "xml": vm_xml(name, uuid=vm_uuid), "memory_mib": 512,
                    "vcpus": 1, "disks": [], "nics": [], "volumes": [], "defined_at": time.time(),
                    "node_limit": [], "node_selector": None, "node_autostart": False, "migration_method": None,
                    "max_downtime": None, "generation": 1}
            transaction.create(schema.vm_uuid(vm_uuid), name) \
                .create(schema.vm(name), spec) \
                .create(schema.vm_key(name, "state"), "start") \
                .create(schema.vm_key(name, "placement"), {"node": node, "last_node": None}) \
                .create(schema.vm_key(name, "status"), {"node": node, "running": True, "error": None,
                                                        "generation": 1, "time": time.time()})
        transaction.commit()


@pytest.mark.cluster(nodes=1)
def test_bench_listing_10000_vms(fresh_cluster):
    local, client = fresh_cluster.local, fresh_cluster.client
    started = time.monotonic()
    with cluster_store(local) as store:
        record_vms(store, VMS_LISTED, node="elsewhere")
    recorded_s = time.monotonic() - started
    name = local.coordinator_names[0]
    local.stop_daemon("pvcapid", name)
    started = time.monotonic()
    local.start_coordinator(name)
    local.wait_ready(60)
    assert eventually(lambda: len(client.vms.list()) == VMS_LISTED, 120, 0.5)
    loaded_s = time.monotonic() - started

    timings = []
    for _ in range(15):
        began = time.perf_counter()
        listed = client.vms.list()
        timings.append((time.perf_counter() - began) * 1000)
    wire = serpent.dumps(listed)
    began = time.perf_counter()
    serpent.loads(wire)
    decode_ms = (time.perf_counter() - began) * 1000

    print(f"\n{VMS_LISTED} VMs recorded in {recorded_s:.1f} s; coordinator cache loaded in {loaded_s:.1f} s")
    print(f"vms.list() of {len(listed)} VMs: median {statistics.median(timings):.0f} ms, "
          f"min {min(timings):.0f} ms, max {max(timings):.0f} ms (target < 300 ms)")
    print(f"  for comparison, serpent.loads of the same {len(wire) / 1e6:.1f} MB reply (list calls use msgpack): "
          f"{decode_ms:.0f} ms")


@pytest.mark.cluster(nodes=3)
def test_bench_flush_of_100_vms(fresh_cluster):
    client = fresh_cluster.client
    names = [f"flush{index:03d}" for index in range(VMS_FLUSHED)]
    for name in names:
        client.vms.define(vm_xml(name), target="hv1")
        client.vms.start(name)
    assert eventually(lambda: all(running_hosts(fresh_cluster).get(name) == ["hv1"] for name in names), 60, 0.5)

    started = time.monotonic()
    task = wait_for_task(client, client.nodes.flush("hv1"), timeout=300)
    done_s = time.monotonic() - started
    where = running_hosts(fresh_cluster)

    per_node = {node: sum(1 for hosts in where.values() if hosts == [node]) for node in ("hv1", "hv2", "hv3")}
    print(f"\nflush of {VMS_FLUSHED} VMs: {done_s:.1f} s (target < 10 s); moved {len(task['moved'])}, "
          f"errors {len(task['errors'])}; now running {per_node}")


def test_bench_selector_choice_among_1000_nodes():
    nodes = [{"name": f"hv{index:04d}", "daemon_state": "run", "domain_state": "ready",
              "memory_total_mib": 262144, "memory_free_mib": 100000 + (index * 7919) % 50000,
              "memory_allocated_mib": 100000, "memory_provisioned_mib": 120000 + (index * 104729) % 40000,
              "load": (index * 31) % 97 / 10, "vcpus_allocated": (index * 13) % 200, "vms_running": index % 40}
             for index in range(NODES_RANKED)]
    vm = {"name": "bench", "memory_mib": 2048, "vcpus": 2, "node_limit": []}
    print()
    for name, selector in sorted(pvc_migration_selectors().items()):
        timings = []
        for _ in range(200):
            began = time.perf_counter()
            placement.choose(nodes, vm, selector)
            timings.append((time.perf_counter() - began) * 1e6)
        batch = placement.Batch(nodes)
        began = time.perf_counter()
        for index in range(100):
            batch.place({**vm, "name": f"bench{index}"}, selector, current_node=None)
        batch_us = (time.perf_counter() - began) * 1e6 / 100
        print(f"selector {name:8} among {NODES_RANKED} nodes: median {statistics.median(timings):.0f} µs a choice; "
              f"{batch_us:.0f} µs a placement in a batch")
