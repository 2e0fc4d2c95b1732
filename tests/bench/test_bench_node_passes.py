"""Benchmark of a node daemon's periodic passes against its libvirtd: prints figures, asserts no timings. Run with
`pytest -m bench -s`.

One simulated host runs 100, then 500 VMs defined and started through the API. Its pvcnoded is then stopped (the
VMs run on) and the same node's parts are built in this process from its own config, with its libvirt reached
through a relay that records every remote procedure called (`slow_libvirt.LibvirtRelay`). For each of the
node's periodic passes (the converge pass, the keepalive figures, the VM statistics) the bench prints the libvirt
calls a pass makes and its wall time (median of several passes, after one that warms the node's caches, as the
daemon's own first pass does).
"""
import statistics
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from pvc import config
from pvc.node import vm_stats
from pvc.node.daemon import NodeDaemon

from helpers import eventually
from slow_libvirt import LibvirtRelay
from vm_support import vm_xml

pytestmark = pytest.mark.bench

SIZES = (100, 500)
PASSES = 5
PROCEDURES = {6: "getInfo", 9: "create", 12: "destroy", 14: "XMLDesc", 16: "info", 23: "lookupByName",
              35: "undefine", 102: "getFreeMemory", 150: "isActive", 212: "state", 265: "metadata",
              273: "listAllDomains", 344: "getAllDomainStats"}


def define_and_start(client, first: int, last: int) -> None:
    """VMs of 64 MiB (500 fit the simulated node's memory), defined on hv1 and started through the API."""
    names = [f"pass{index:04d}" for index in range(first, last)]

    def add(name: str) -> None:
        client.vms.define(vm_xml(name, memory_mib=64), target="hv1")
        client.vms.start(name)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(add, names))


def measure(relay: LibvirtRelay, work, passes: int = PASSES) -> tuple[int, float, float, Counter]:
    """The calls of a first pass of `work`, median calls and milliseconds of the passes after it, and the
    procedures of the last pass."""
    before = len(relay.procedures)
    work()
    first = len(relay.procedures) - before
    calls, timings, last = [], [], Counter()
    for _ in range(passes):
        before = len(relay.procedures)
        began = time.perf_counter()
        work()
        timings.append((time.perf_counter() - began) * 1000)
        last = Counter(relay.procedures[before:])
        calls.append(sum(last.values()))
    return first, statistics.median(calls), statistics.median(timings), last


def describe(procedures: Counter) -> str:
    return ", ".join(f"{PROCEDURES.get(number, number)} {count}" for number, count in procedures.most_common())


@pytest.mark.cluster(nodes=1)
def test_bench_libvirt_calls_of_a_node_s_passes(fresh_cluster):
    local, client = fresh_cluster.local, fresh_cluster.client
    defined = 0
    print()
    for size in SIZES:
        define_and_start(client, defined, size)
        defined = size
        assert eventually(lambda: len([vm for vm in client.vms.list() if vm["running"]]) == size, 120, 0.5)
        local.stop_daemon("pvcnoded", "hv1")
        relay = LibvirtRelay(local.host("hv1").socket_path)
        settings = config.load(local.state_dir / "nodes" / "hv1" / "pvcnoded.yaml", config.NODED_SETTINGS,
                               {"libvirt_uri": relay.uri(), "log_file": None})
        node = NodeDaemon(settings)
        try:
            node.facts = node.hypervisor.facts()
            node.store.start(10)
            node.ownership.acquire()
            node.vms.start()
            converge = measure(relay, node.reconciler.converge_all)
            figures = measure(relay, lambda: node.hypervisor.figures(node.facts["memory_total_mib"]))
            stats = measure(relay, lambda: vm_stats.collect(node.hypervisor))
        finally:
            node.store.stop()
            node.hypervisor.close()
            relay.close()
        for what, (first, calls, ms, procedures) in (("converge pass", converge), ("keepalive figures", figures),
                                                     ("VM statistics", stats)):
            print(f"{size} VMs on one node, {what}: {calls:.0f} libvirt calls a pass, {ms:.1f} ms "
                  f"(median of {PASSES}; last pass: {describe(procedures)}); the node's first pass: {first} calls")
        local.start_node_daemon("hv1")
        local.wait_ready(30)
