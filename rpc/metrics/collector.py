"""The cluster's metric families, built at scrape time from what this coordinator already holds: its watched
cache (nodes, their keepalives and VM statistics records, VMs, faults, config), the keepalive ages it
observed, its storage area's watched pools and volumes, and the last rounds of its pollers. A scrape makes no
ZooKeeper request."""
import math
import time
from typing import Any, Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pvc import schema
from pvc.cache import OWN_VALUE
from pvc.health.faults import fault_views, health
from pvc.hookspecs import SEVERITIES
from pvc.node_stats_fields import DISK_FIELDS, INTERFACE_FIELDS, VM_FIELDS
from pvc.rpc.context import CoordinatorContext

MIB = 1024 * 1024
KIB = 1024


class ClusterCollector(Collector):
    def __init__(self, context: CoordinatorContext, keepalive_age: Callable[[str], float | None],
                 storage: Callable[[], dict[str, dict[str, Any]]], pool_usage: Callable[[], dict[str, dict]],
                 zookeeper: Callable[[], dict[str, dict[str, Any]]]):
        self._context = context
        self._keepalive_age = keepalive_age
        self._storage = storage
        self._pool_usage = pool_usage
        self._zookeeper = zookeeper

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[Metric]:
        cache = self._context.cache
        nodes = {name: raw for name, raw in cache.nodes.snapshot().items() if raw.get(OWN_VALUE) is not None}
        vms = {name: raw for name, raw in cache.vms.snapshot().items() if raw.get(OWN_VALUE) is not None}
        faults = fault_views(cache.faults.snapshot())
        yield from self._cluster(nodes, vms, faults, cache.config.get())
        yield from self._nodes(nodes, faults)
        yield from self._vms(nodes, vms)
        yield from self._storage_families()
        yield from self._zookeeper_families()

    def _cluster(self, nodes, vms, faults, config) -> Iterator[Metric]:
        yield _gauge("pvc_cluster_health", "Cluster health: 100 minus the deltas of active unacknowledged faults",
                     [], [([], health(faults))])
        active = [fault for fault in faults if fault["active"]]
        yield _gauge("pvc_cluster_faults", "Active faults by severity and whether they are acknowledged",
                     ["severity", "acknowledged"],
                     [([severity, str(acknowledged).lower()],
                       sum(1 for fault in active if fault["severity"] == severity
                           and fault["acknowledged"] == acknowledged))
                      for severity in SEVERITIES for acknowledged in (False, True)])
        yield _gauge("pvc_fault", "Each active fault, valued at the health it takes off (its delta); "
                     "source is a node's name or 'cluster', check the health check that raised it",
                     ["id", "source", "check", "severity", "acknowledged"],
                     [([fault["id"], fault["source"] or "", fault["check"] or "", fault["severity"] or "",
                        str(fault["acknowledged"]).lower()], fault["delta"]) for fault in active])
        yield _gauge("pvc_cluster_nodes", "Nodes by daemon state", ["daemon_state"],
                     [([state], sum(1 for raw in nodes.values() if (raw.get("daemon_state") or "init") == state))
                      for state in schema.DAEMON_STATES])
        yield _gauge("pvc_cluster_nodes_by_domain_state", "Nodes by domain state", ["domain_state"],
                     [([state], sum(1 for raw in nodes.values() if (raw.get("domain_state") or "ready") == state))
                      for state in schema.DOMAIN_STATES])
        yield _gauge("pvc_cluster_vms", "VMs by desired state", ["state"],
                     [([state], sum(1 for raw in vms.values() if (raw.get("state") or "stop") == state))
                      for state in schema.VM_STATES])
        yield _gauge("pvc_cluster_maintenance", "1 while the cluster is in maintenance mode", [],
                     [([], 1 if config.get("maintenance") else 0)])
        leading = self._context.leadership.leader_node is not None
        yield _gauge("pvc_coordinator_leader", "1 on the coordinator that holds leadership, else 0",
                     ["coordinator"], [([self._context.name], 1 if leading else 0)])

    def _nodes(self, nodes, faults) -> Iterator[Metric]:
        rows: dict[str, list] = {key: [] for key in _NODE_GAUGES}
        daemon_states, domain_states, healths, ages, stale = [], [], [], [], []
        for name, raw in sorted(nodes.items()):
            facts, keepalive = raw.get(OWN_VALUE) or {}, raw.get("keepalive") or {}
            daemon_state, domain_state = raw.get("daemon_state") or "init", raw.get("domain_state") or "ready"
            daemon_states += [([name, state], 1 if state == daemon_state else 0) for state in schema.DAEMON_STATES]
            domain_states += [([name, state], 1 if state == domain_state else 0) for state in schema.DOMAIN_STATES]
            healths.append(([name], health(faults, name)))
            age = self._keepalive_age(name)
            ages.append(([name], math.nan if age is None else age))
            stale.append(([name], 1 if keepalive.get("figures_stale") else 0))
            total_mib = facts.get("memory_total_mib")
            values = {"pvc_node_cpus": facts.get("cpus"), "pvc_node_load": keepalive.get("load"),
                      "pvc_node_memory_total_bytes": _scaled(total_mib, MIB),
                      "pvc_node_memory_used_bytes": _scaled(None if total_mib is None or
                                                            keepalive.get("memory_free_mib") is None
                                                            else total_mib - keepalive["memory_free_mib"], MIB),
                      "pvc_node_memory_allocated_bytes": _scaled(keepalive.get("memory_allocated_mib"), MIB),
                      "pvc_node_memory_provisioned_bytes": _scaled(keepalive.get("memory_provisioned_mib"), MIB),
                      "pvc_node_vms_running": keepalive.get("vms_running"),
                      "pvc_node_vms_defined": keepalive.get("vms_defined"),
                      "pvc_node_vcpus_allocated": keepalive.get("vcpus_allocated")}
            for key, value in values.items():
                if value is not None:
                    rows[key].append(([name], value))
        yield _gauge("pvc_node_health", "Node health: 100 minus its active unacknowledged faults' deltas",
                     ["node"], healths)
        yield _gauge("pvc_node_daemon_state", "1 for the node's current daemon state", ["node", "state"],
                     daemon_states)
        yield _gauge("pvc_node_domain_state", "1 for the node's current domain state", ["node", "state"],
                     domain_states)
        for key, help_text in _NODE_GAUGES.items():
            yield _gauge(key, help_text, ["node"], rows[key])
        yield _gauge("pvc_node_keepalive_age_seconds", "Seconds since this coordinator saw the node's keepalive "
                     "change (NaN before it saw one)", ["node"], ages)
        yield _gauge("pvc_node_figures_stale", "1 while the node's figures are stale: its libvirt does not answer",
                     ["node"], stale)

    def _vms(self, nodes, vms) -> Iterator[Metric]:
        states, running, unknown, vcpus, memory = [], [], [], [], []
        for name, raw in sorted(vms.items()):
            spec, status = raw.get(OWN_VALUE) or {}, raw.get("status") or {}
            node = (raw.get("placement") or {}).get("node") or ""
            state = raw.get("state") or "stop"
            states.append(([name, node, state], 1))
            is_unknown = "running" in status and status.get("running") is None
            running.append(([name, node], 1 if status.get("running") and status.get("node") == node else 0))
            unknown.append(([name, node], 1 if is_unknown else 0))
            vcpus.append(([name, node], spec.get("vcpus") or 0))
            memory.append(([name, node], (spec.get("memory_mib") or 0) * MIB))
        yield _gauge("pvc_vm_state", "1 for each VM's desired state, labelled with its node", ["vm", "node", "state"],
                     states)
        yield _gauge("pvc_vm_running", "1 while the VM's node reports it running", ["vm", "node"], running)
        yield _gauge("pvc_vm_unknown", "1 while the VM's node cannot say whether it runs", ["vm", "node"], unknown)
        yield _gauge("pvc_vm_vcpus", "vCPUs the VM is defined with", ["vm", "node"], vcpus)
        yield _gauge("pvc_vm_memory_bytes", "Memory the VM is defined with", ["vm", "node"], memory)
        yield from _vm_statistics(nodes)

    def _storage_families(self) -> Iterator[Metric]:
        pools = self._storage()
        usage = self._pool_usage()
        yield _gauge("pvc_storage_pool_volumes", "Volumes in the pool", ["pool"],
                     [([pool], figures["volumes"]) for pool, figures in sorted(pools.items())])
        yield _gauge("pvc_storage_pool_snapshots", "Volume snapshots in the pool", ["pool"],
                     [([pool], figures["snapshots"]) for pool, figures in sorted(pools.items())])
        yield _gauge("pvc_storage_pool_provisioned_bytes", "Bytes of the pool's volumes as sized", ["pool"],
                     [([pool], figures["provisioned_bytes"]) for pool, figures in sorted(pools.items())])
        for key, help_text in (("size", "Capacity of the pool, as its storage last reported"),
                               ("used", "Bytes the pool's data takes, as its storage last reported"),
                               ("free", "Bytes the pool can still hold, as its storage last reported")):
            yield _gauge(f"pvc_storage_pool_{key}_bytes", help_text, ["pool"],
                         [([pool], figures[f"{key}_bytes"]) for pool, figures in sorted(usage.items())])

    def _zookeeper_families(self) -> Iterator[Metric]:
        servers = self._zookeeper()
        yield _gauge("pvc_zookeeper_up", "1 when the ZooKeeper server answered mntr in the last round",
                     ["server"], [([server], 1 if found["up"] else 0) for server, found in sorted(servers.items())])
        answering = {server: found["mntr"] for server, found in sorted(servers.items()) if found["up"]}
        for name, key, help_text, scale in _MNTR:
            yield _gauge(name, help_text, ["server"], [([server], float(mntr[key]) * scale)
                                                       for server, mntr in answering.items() if key in mntr])
        yield _gauge("pvc_zookeeper_leader", "1 on the ensemble's leader (or a standalone server)", ["server"],
                     [([server], 1 if mntr.get("zk_server_state") in ("leader", "standalone") else 0)
                      for server, mntr in answering.items()])


_NODE_GAUGES = {
    "pvc_node_cpus": "CPUs of the node",
    "pvc_node_load": "CPU seconds per second the node's running guests used",
    "pvc_node_memory_total_bytes": "Memory of the node",
    "pvc_node_memory_used_bytes": "Memory of the node in use",
    "pvc_node_memory_allocated_bytes": "Memory of the node's running VMs",
    "pvc_node_memory_provisioned_bytes": "Memory of every VM defined on the node",
    "pvc_node_vms_running": "VMs running on the node",
    "pvc_node_vms_defined": "VMs defined on the node",
    "pvc_node_vcpus_allocated": "vCPUs of the node's running VMs",
}

_MNTR = (
    ("pvc_zookeeper_latency_average_seconds", "zk_avg_latency", "Average request latency", 0.001),
    ("pvc_zookeeper_latency_max_seconds", "zk_max_latency", "Largest request latency", 0.001),
    ("pvc_zookeeper_outstanding_requests", "zk_outstanding_requests", "Requests queued in the server", 1),
    ("pvc_zookeeper_znodes", "zk_znode_count", "Znodes in the server's tree", 1),
    ("pvc_zookeeper_followers", "zk_synced_followers", "Followers in sync with the leader (on the leader)", 1),
    ("pvc_zookeeper_alive_connections", "zk_num_alive_connections", "Client connections", 1),
)


def _vm_statistics(nodes: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    """The families read from each node's VM statistics record (`pvc.node.vm_stats`)."""
    vm_labels, disk_labels, interface_labels = ["vm", "node"], ["vm", "node", "disk"], ["vm", "node", "interface"]
    cpu = CounterMetricFamily("pvc_vm_cpu_seconds", "CPU time the VM used", labels=vm_labels)
    balloon = GaugeMetricFamily("pvc_vm_memory_balloon_bytes", "The VM's current balloon size", labels=vm_labels)
    used = GaugeMetricFamily("pvc_vm_memory_used_bytes", "Memory the VM's process holds (RSS)", labels=vm_labels)
    disks = {field: CounterMetricFamily(f"pvc_vm_disk_{field}", f"The VM's disk {field.replace('_', ' ')}",
                                        labels=disk_labels) for field in DISK_FIELDS}
    interfaces = {field: CounterMetricFamily(f"pvc_vm_network_{field}",
                                             f"The VM's network interface {field.replace('_', ' ')}",
                                             labels=interface_labels) for field in INTERFACE_FIELDS}
    ages = GaugeMetricFamily("pvc_node_vm_stats_age_seconds", "Age of the node's VM statistics record (by the "
                             "node's clock against this coordinator's)", labels=["node"])
    now = time.time()
    for node, raw in sorted(nodes.items()):
        record = raw.get("vm_stats") or {}
        if record.get("time"):
            ages.add_metric([node], max(now - record["time"], 0))
        for vm, fields in sorted((record.get("vms") or {}).items()):
            values = dict(zip(VM_FIELDS, fields))
            cpu.add_metric([vm, node], values.get("cpu_time_ns", 0) / 1e9)
            balloon.add_metric([vm, node], values.get("balloon_current_kib", 0) * KIB)
            used.add_metric([vm, node], values.get("balloon_rss_kib", 0) * KIB)
            for disk, numbers in sorted((fields[len(VM_FIELDS)] if len(fields) > len(VM_FIELDS) else {}).items()):
                for field, number in zip(DISK_FIELDS, numbers):
                    disks[field].add_metric([vm, node, disk], number)
            for interface, numbers in sorted((fields[len(VM_FIELDS) + 1]
                                              if len(fields) > len(VM_FIELDS) + 1 else {}).items()):
                for field, number in zip(INTERFACE_FIELDS, numbers):
                    interfaces[field].add_metric([vm, node, interface], number)
    yield from (cpu, balloon, used, *disks.values(), *interfaces.values(), ages)


def _gauge(name: str, help_text: str, labels: list[str], rows: list[tuple[list[str], Any]]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, help_text, labels=labels)
    for label_values, value in rows:
        family.add_metric(label_values, value)
    return family


def _scaled(value: float | None, unit: int) -> float | None:
    return None if value is None else value * unit
