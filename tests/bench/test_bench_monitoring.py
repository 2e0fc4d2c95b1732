"""Benchmark of health and metrics: one /metrics scrape of a 50-node, 2,000-VM cluster (and the ZooKeeper
requests it makes: none), the size per node of the keepalive and of the VM statistics record, and the CPU one
round of a node's health checks costs. Prints figures, asserts no timings. Run with `pytest -m bench -s`."""
import resource
import statistics
import time
import urllib.request

import pytest
import yaml

from pvc import config, plugin_manager, schema
from pvc.cache import ClusterCache
from pvc.node.health import NODE_CHECKS, NodeHealth
from pvc.node.vm_stats import from_bulk, record
from pvc.plugins.storage_file import FileBackend
from pvc.rpc.agents import NodeAgents
from pvc.rpc.context import CoordinatorContext
from pvc.rpc.leadership import Leadership
from pvc.rpc.metrics import instruments
from pvc.rpc.metrics.collector import ClusterCollector
from pvc.rpc.metrics.server import MetricsServer, registry_renderer
from pvc.store import Store

from helpers import cluster_store

pytestmark = pytest.mark.bench

NODES, VMS = 50, 2000
SCRAPES = 10


class FakeDomain:
    def __init__(self, name: str):
        self._name = name

    def name(self) -> str:
        return self._name


def bulk_stats(names: list[str]) -> list:
    """What libvirt's getAllDomainStats returns for running QEMU guests with two disks and two interfaces."""
    stats = []
    for index, name in enumerate(names):
        values = {"state.state": 1, "cpu.time": 123456789012 + index, "balloon.current": 4194304,
                  "balloon.maximum": 4194304, "balloon.rss": 3912345, "balloon.unused": 1234567,
                  "balloon.available": 4000000, "block.count": 2, "net.count": 2}
        for disk, device in enumerate(("vda", "vdb")):
            values.update({f"block.{disk}.name": device, f"block.{disk}.rd.bytes": 98765432100,
                           f"block.{disk}.wr.bytes": 12345678900, f"block.{disk}.rd.reqs": 1234567,
                           f"block.{disk}.wr.reqs": 765432})
        for nic, device in enumerate((f"vnet{index * 2}", f"vnet{index * 2 + 1}")):
            values.update({f"net.{nic}.name": device, **{f"net.{nic}.{key}": 9876543210 for key in
                           ("rx.bytes", "rx.pkts", "rx.errs", "rx.drop", "tx.bytes", "tx.pkts", "tx.errs",
                            "tx.drop")}})
        stats.append((FakeDomain(name), values))
    return stats


def populate(store, keepalive: dict) -> None:
    per_node = VMS // NODES
    for node_index in range(NODES):
        node = f"bench{node_index:02d}"
        names = [f"vm{node_index:02d}-{index:03d}" for index in range(per_node)]
        store.transaction() \
            .create(schema.node(node), {"cpus": 64, "memory_total_mib": 524288, "keepalive_interval": 5}) \
            .create(schema.node_key(node, "daemon_state"), "run") \
            .create(schema.node_key(node, "domain_state"), "ready") \
            .create(schema.node_key(node, "keepalive"), keepalive) \
            .create(schema.node_key(node, "vm_stats"), record(from_bulk(bulk_stats(names)))) \
            .commit()
        for name in names:
            store.transaction() \
                .create(schema.vm(name), {"uuid": name, "vcpus": 2, "memory_mib": 4096, "xml": "<domain/>"}) \
                .create(schema.vm_key(name, "state"), "start") \
                .create(schema.vm_key(name, "placement"), {"node": node, "last_node": None}) \
                .create(schema.vm_key(name, "status"), {"node": node, "running": True}) \
                .commit()
    store.transaction().create(schema.fault("node.bench01.bmc"), {
        "id": "node.bench01.bmc", "source": "bench01", "check": "bmc", "severity": "warning", "delta": 10,
        "message": "BMC does not answer", "count": 3, "first_seen": 1.0, "last_seen": 3.0, "cleared": None}).commit()


def _scrapes_after_new_statistics(store, cache, collector, server, rounds: int = 5) -> list[float]:
    """Each round, every node writes a new VM statistics record (as each does every interval, so a scrape
    nearly always follows new records); once the collector has rendered them, one scrape is timed."""
    collector.start()
    timings = []
    for round_ in range(rounds):
        for node_index in range(NODES):
            names = [f"vm{node_index:02d}-{index:03d}" for index in range(VMS // NODES)]
            record_ = record(from_bulk(bulk_stats(names)))
            record_["time"] += round_ + 1
            store.zk.set(schema.node_key(f"bench{node_index:02d}", "vm_stats"), schema.encode(record_))
        cache.catch_up(30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(
                collector._rendered_stats.get(name, (None,))[0] is (raw.get("vm_stats"))
                for name, raw in cache.nodes.snapshot().items()):
            time.sleep(0.05)
        began = time.perf_counter()
        urllib.request.urlopen(f"http://{server.address}/metrics", timeout=30).read()
        timings.append(time.perf_counter() - began)
    return timings


def test_bench_monitoring(cluster, tmp_path):
    with cluster_store(cluster.local) as node_store:
        real_keepalive = node_store.zk.get(schema.node_key("hv1", "keepalive"))[0]
    vm_stats_bytes = len(schema.encode(record(from_bulk(bulk_stats([f"vm-{i}" for i in range(VMS // NODES)])))))
    vm_stats_500 = record(from_bulk(bulk_stats([f"vm-{i}" for i in range(500)])))
    print(f"\nkeepalive record per node (as hv1 writes it): {len(real_keepalive)} bytes")
    print(f"VM statistics record per node, {VMS // NODES} VMs with 2 disks and 2 interfaces each: "
          f"{vm_stats_bytes} bytes ({vm_stats_bytes / (VMS // NODES):.0f} bytes per VM)")
    print(f"VM statistics record with 500 such VMs: {len(schema.encode(vm_stats_500))} bytes, truncated: "
          f"{vm_stats_500['truncated']} (bound {512 * 1024} bytes)")

    settings = yaml.safe_load((cluster.local._daemon_dir("coordinators", "pvcapid1") / "pvcapid.yaml").read_text())
    chroot = f"/bench-{int(time.time())}"
    setup = Store(settings["zookeeper_hosts"], "pvc", settings["zookeeper_password"])
    setup.start()
    setup.zk.ensure_path(chroot)
    setup.stop()
    hosts = settings["zookeeper_hosts"] + chroot
    store = Store(hosts, "pvc", settings["zookeeper_password"])
    store.start()
    try:
        started = time.monotonic()
        populate(store, schema.decode(real_keepalive))
        print(f"populated {NODES} nodes and {VMS} VMs in {time.monotonic() - started:.1f} s")
        cache = ClusterCache(store)
        cache.start()
        cache.catch_up(60)
        context = CoordinatorContext("bench", {"zookeeper_hosts": hosts}, store, cache, plugin_manager.load(),
                                     NodeAgents("secret"), Leadership(store, "bench", 1, lambda _node: None))
        collector = ClusterCollector(context, lambda _name: 0.5, lambda: {}, lambda: {}, lambda: {})
        server = MetricsServer("127.0.0.1:0", [lambda: collector.render().encode(),
                                               registry_renderer(instruments.REGISTRY)])
        server.start()
        requests = []
        original_call = store.zk._call
        store.zk._call = lambda request, async_object: (requests.append(type(request).__name__),
                                                        original_call(request, async_object))[1]
        try:
            first = time.perf_counter()
            urllib.request.urlopen(f"http://{server.address}/metrics", timeout=30).read()
            first = time.perf_counter() - first
            rendered, rendered_cpu = [], []
            for _ in range(SCRAPES):
                began, began_cpu = time.perf_counter(), time.process_time()
                server.scrape()
                rendered.append(time.perf_counter() - began)
                rendered_cpu.append(time.process_time() - began_cpu)
            timings, size = [], 0
            for _ in range(SCRAPES):
                began = time.perf_counter()
                body = urllib.request.urlopen(f"http://{server.address}/metrics", timeout=30).read()
                timings.append(time.perf_counter() - began)
                size = len(body)
            store.zk._call = original_call
            fresh = _scrapes_after_new_statistics(store, cache, collector, server)
        finally:
            store.zk._call = original_call
            collector.stop()
            server.stop()
        series = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
        print(f"first scrape (renders every node's VM statistics record): {first * 1000:.0f} ms")
        print(f"building the scrape's body alone, nothing changed since the last: median "
              f"{statistics.median(rendered) * 1000:.0f} ms wall, {statistics.median(rendered_cpu) * 1000:.0f} ms "
              f"CPU (this process; the machine's load shows in the wall figures)")
        print(f"one /metrics scrape at {NODES} nodes and {VMS} VMs: median {statistics.median(timings) * 1000:.0f} ms, "
              f"min {min(timings) * 1000:.0f} ms, max {max(timings) * 1000:.0f} ms (target under 100 ms); "
              f"{series} series, {size / 1024:.0f} KiB; ZooKeeper requests made by {SCRAPES} scrapes: {len(requests)}")
        print(f"one /metrics scrape after every node wrote a new VM statistics record (rendered as they arrived, "
              f"as a coordinator does): median {statistics.median(fresh) * 1000:.0f} ms, "
              f"max {max(fresh) * 1000:.0f} ms over {len(fresh)} rounds")
    finally:
        store.stop()

    node_settings = yaml.safe_load((cluster.local._daemon_dir("nodes", "hv1") / "pvcnoded.yaml").read_text())
    node_settings = {**{setting.name: setting.default for setting in config.NODED_SETTINGS}, **node_settings}
    with cluster_store(cluster.local) as health_store:
        figures = {"cpus": 16, "memory_total_mib": 65536, **schema.decode(real_keepalive)}
        health = NodeHealth("hv1", node_settings, health_store, plugin_manager.load().registry(NODE_CHECKS),
                            health_store.transaction, lambda: True, lambda: figures, lambda: None,
                            FileBackend(node_settings), lambda: {}, lambda: 60, lambda: True)
        rounds = 10
        before_self, before_children = (resource.getrusage(resource.RUSAGE_SELF),
                                        resource.getrusage(resource.RUSAGE_CHILDREN))
        began = time.monotonic()
        for _ in range(rounds):
            outcomes = health.runner.run_round()
        elapsed = time.monotonic() - began
        after_self, after_children = (resource.getrusage(resource.RUSAGE_SELF),
                                      resource.getrusage(resource.RUSAGE_CHILDREN))
    own = (after_self.ru_utime + after_self.ru_stime - before_self.ru_utime - before_self.ru_stime) / rounds
    children = (after_children.ru_utime + after_children.ru_stime - before_children.ru_utime
                - before_children.ru_stime) / rounds
    print(f"one round of the {len(outcomes)} built-in node checks (BMC via ipmitool to ipmi_sim, file storage): "
          f"{own * 1000:.1f} ms CPU in pvcnoded + {children * 1000:.1f} ms in ipmitool, "
          f"{elapsed / rounds * 1000:.0f} ms wall; outcomes: "
          + ", ".join(f"{name} -{result.delta}" for name, result in sorted(outcomes.items())))
