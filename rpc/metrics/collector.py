"""The cluster's metric families, rendered at scrape time from what this coordinator already holds: its watched
cache (nodes, their keepalives and VM statistics records, VMs, faults, config), the keepalive ages it
observed, its storage area's watched pools and volumes, and the last rounds of its pollers. A scrape makes no
ZooKeeper request.

A node's VM statistics (most of a scrape's lines) are rendered once per record the node writes and kept
until the next, so a scrape between two records only joins text. Nodes write those records every few seconds,
more often than Prometheus scrapes, so a scrape would nearly always find every record new: they are rendered
as they arrive instead (`start`), off the scrape's path, which then finds them ready."""
import logging
import threading
import time
from typing import Any, Callable

from pvc import schema
from pvc.cache import OWN_VALUE
from pvc.health.faults import fault_views, health
from pvc.hookspecs import SEVERITIES
from pvc.node_stats_fields import DISK_FIELDS, INTERFACE_FIELDS, VM_FIELDS
from pvc.rpc.context import CoordinatorContext
from pvc.rpc.metrics.exposition import escape, family, header, number

log = logging.getLogger(__name__)

MIB = 1024 * 1024
KIB = 1024
RENDER_INTERVAL_S = 0.5

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
    "pvc_node_converge_lag_seconds": "Seconds since the node last completed a pass converging libvirt to the "
                                     "desired state, as of its latest keepalive",
}

_MNTR = (
    ("pvc_zookeeper_latency_average_seconds", "zk_avg_latency", "Average request latency", 0.001),
    ("pvc_zookeeper_latency_max_seconds", "zk_max_latency", "Largest request latency", 0.001),
    ("pvc_zookeeper_outstanding_requests", "zk_outstanding_requests", "Requests queued in the server", 1),
    ("pvc_zookeeper_znodes", "zk_znode_count", "Znodes in the server's tree", 1),
    ("pvc_zookeeper_followers", "zk_synced_followers", "Followers in sync with the leader (on the leader)", 1),
    ("pvc_zookeeper_alive_connections", "zk_num_alive_connections", "Client connections", 1),
)

_VM_STAT_FAMILIES = (
    ("pvc_vm_cpu_seconds", "counter", "CPU time the VM used"),
    ("pvc_vm_memory_balloon_bytes", "gauge", "The VM's current balloon size"),
    ("pvc_vm_memory_used_bytes", "gauge", "Memory the VM's process holds (RSS)"),
    *((f"pvc_vm_disk_{field}", "counter", f"The VM's disk {field.replace('_', ' ')}") for field in DISK_FIELDS),
    *((f"pvc_vm_network_{field}", "counter", f"The VM's network interface {field.replace('_', ' ')}")
      for field in INTERFACE_FIELDS),
)


class ClusterCollector:
    def __init__(self, context: CoordinatorContext, keepalive_age: Callable[[str], float | None],
                 storage: Callable[[], dict[str, dict[str, Any]]], pool_usage: Callable[[], dict[str, dict]],
                 zookeeper: Callable[[], dict[str, dict[str, Any]]],
                 backend_health: Callable[[], dict[str, dict[str, Any]]] = dict):
        self._context = context
        self._keepalive_age = keepalive_age
        self._storage = storage
        self._pool_usage = pool_usage
        self._zookeeper = zookeeper
        self._backend_health = backend_health
        self._rendered_stats: dict[str, tuple[Any, dict[str, str]]] = {}
        """Node → (the VM statistics record rendered, its lines per family); the record is held so that
        its identity stands for its content."""
        self._rendered_vms: dict[str, tuple[tuple, tuple[str, ...]]] = {}
        """VM → (the records rendered, its line in each of `_VM_FAMILIES`)."""
        self._stats_section: tuple[tuple, str] = ((), "")
        """The VM statistics families as last joined, with the node renderings they were joined from."""
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def start(self, interval: float = RENDER_INTERVAL_S) -> None:
        """Render what changed in the cache every `interval` seconds, in the background."""
        threading.Thread(target=self._render_changes, args=(interval,), name="metrics-render", daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()

    def _render_changes(self, interval: float) -> None:
        cache = self._context.cache
        seen_nodes = seen_vms = -1
        while not self._stopping.wait(interval):
            try:
                nodes_now, changed_nodes = cache.nodes.changes(seen_nodes)
                vms_now, changed_vms = cache.vms.changes(seen_vms)
                if changed_nodes != []:
                    self._rendered_statistics({name: raw for name, raw in cache.nodes.snapshot().items()
                                               if raw.get(OWN_VALUE) is not None})
                if changed_vms is None:
                    self._vms({name: raw for name, raw in cache.vms.snapshot().items()
                               if raw.get(OWN_VALUE) is not None})
                elif changed_vms:
                    self._render_vms_again(changed_vms)
                seen_nodes, seen_vms = nodes_now, vms_now
            except Exception:  # noqa: BLE001 - a scrape renders whatever this missed; the loop must go on
                log.exception("metrics: rendering the cache's changes failed")

    def render(self) -> str:
        cache = self._context.cache
        nodes = {name: raw for name, raw in cache.nodes.snapshot().items() if raw.get(OWN_VALUE) is not None}
        vms = {name: raw for name, raw in cache.vms.snapshot().items() if raw.get(OWN_VALUE) is not None}
        faults = fault_views(cache.faults.snapshot())
        return "".join([self._cluster(nodes, vms, faults, cache.config.get()), self._nodes(nodes, faults),
                        self._vms(vms), self._vm_statistics(nodes), self._storage_families(),
                        self._zookeeper_families()])

    def _cluster(self, nodes, vms, faults, config) -> str:
        active = [fault for fault in faults if fault["active"]]
        leading = self._context.leadership.leader_node is not None
        return "".join([
            family("pvc_cluster_health", "gauge", "Cluster health: 100 minus the deltas of active unacknowledged "
                   "faults", (), [((), health(faults))]),
            family("pvc_cluster_faults", "gauge", "Active faults by severity and whether they are acknowledged",
                   ("severity", "acknowledged"),
                   [((severity, str(acknowledged).lower()),
                     sum(1 for fault in active if fault["severity"] == severity
                         and fault["acknowledged"] == acknowledged))
                    for severity in SEVERITIES for acknowledged in (False, True)]),
            family("pvc_fault", "gauge", "Each active fault, valued at the health it takes off (its delta); "
                   "source is a node's name or 'cluster', check the health check that raised it",
                   ("id", "source", "check", "severity", "acknowledged"),
                   [((fault["id"], fault["source"] or "", fault["check"] or "", fault["severity"] or "",
                      str(fault["acknowledged"]).lower()), fault["delta"]) for fault in active]),
            family("pvc_cluster_nodes", "gauge", "Nodes by daemon state", ("daemon_state",),
                   [((state,), sum(1 for raw in nodes.values() if (raw.get("daemon_state") or "init") == state))
                    for state in schema.DAEMON_STATES]),
            family("pvc_cluster_nodes_by_domain_state", "gauge", "Nodes by domain state", ("domain_state",),
                   [((state,), sum(1 for raw in nodes.values() if (raw.get("domain_state") or "ready") == state))
                    for state in schema.DOMAIN_STATES]),
            family("pvc_cluster_vms", "gauge", "VMs by desired state", ("state",),
                   [((state,), sum(1 for raw in vms.values() if (raw.get("state") or "stop") == state))
                    for state in schema.VM_STATES]),
            family("pvc_cluster_maintenance", "gauge", "1 while the cluster is in maintenance mode", (),
                   [((), 1 if config.get("maintenance") else 0)]),
            family("pvc_coordinator_leader", "gauge", "1 on the coordinator that holds leadership, else 0",
                   ("coordinator",), [((self._context.name,), 1 if leading else 0)]),
        ])

    def _nodes(self, nodes, faults) -> str:
        rows: dict[str, list] = {key: [] for key in _NODE_GAUGES}
        daemon_states, domain_states, healths, ages, stale = [], [], [], [], []
        for name, raw in sorted(nodes.items()):
            facts, keepalive = raw.get(OWN_VALUE) or {}, raw.get("keepalive") or {}
            daemon_state, domain_state = raw.get("daemon_state") or "init", raw.get("domain_state") or "ready"
            daemon_states += [((name, state), 1 if state == daemon_state else 0) for state in schema.DAEMON_STATES]
            domain_states += [((name, state), 1 if state == domain_state else 0) for state in schema.DOMAIN_STATES]
            healths.append(((name,), health(faults, name)))
            ages.append(((name,), self._keepalive_age(name)))
            stale.append(((name,), 1 if keepalive.get("figures_stale") else 0))
            total_mib, free_mib = facts.get("memory_total_mib"), keepalive.get("memory_free_mib")
            values = {"pvc_node_cpus": facts.get("cpus"), "pvc_node_load": keepalive.get("load"),
                      "pvc_node_memory_total_bytes": _scaled(total_mib, MIB),
                      "pvc_node_memory_used_bytes": None if total_mib is None or free_mib is None
                      else (total_mib - free_mib) * MIB,
                      "pvc_node_memory_allocated_bytes": _scaled(keepalive.get("memory_allocated_mib"), MIB),
                      "pvc_node_memory_provisioned_bytes": _scaled(keepalive.get("memory_provisioned_mib"), MIB),
                      "pvc_node_vms_running": keepalive.get("vms_running"),
                      "pvc_node_vms_defined": keepalive.get("vms_defined"),
                      "pvc_node_vcpus_allocated": keepalive.get("vcpus_allocated"),
                      "pvc_node_converge_lag_seconds": keepalive.get("converge_age_s")}
            for key, value in values.items():
                if value is not None:
                    rows[key].append(((name,), value))
        parts = [
            family("pvc_node_health", "gauge", "Node health: 100 minus its active unacknowledged faults' deltas",
                   ("node",), healths),
            family("pvc_node_daemon_state", "gauge", "1 for the node's current daemon state", ("node", "state"),
                   daemon_states),
            family("pvc_node_domain_state", "gauge", "1 for the node's current domain state", ("node", "state"),
                   domain_states),
            *(family(key, "gauge", help_text, ("node",), rows[key]) for key, help_text in _NODE_GAUGES.items()),
            family("pvc_node_keepalive_age_seconds", "gauge", "Seconds since this coordinator saw the node's "
                   "keepalive change (NaN before it saw one)", ("node",), ages),
            family("pvc_node_figures_stale", "gauge", "1 while the node's figures are stale: its libvirt does "
                   "not answer", ("node",), stale),
        ]
        now = time.time()
        parts.append(family("pvc_node_vm_stats_age_seconds", "gauge", "Age of the node's VM statistics record "
                            "(by the node's clock against this coordinator's)", ("node",),
                            [((name,), max(now - raw["vm_stats"]["time"], 0)) for name, raw in sorted(nodes.items())
                             if (raw.get("vm_stats") or {}).get("time")]))
        return "".join(parts)

    def _vms(self, vms) -> str:
        """The per-VM families; each VM's lines are rendered once per change of its records (kept with the
        records they came from, whose identities stand for their contents)."""
        rendered = []
        with self._lock:
            kept = self._rendered_vms
            fresh: dict[str, tuple[tuple, tuple[str, ...]]] = {}
            for name, raw in sorted(vms.items()):
                sources = _sources(raw)
                previous = kept.get(name)
                if previous is None or any(old is not new for old, new in zip(previous[0], sources)):
                    previous = (sources, _render_vm(name, raw))
                fresh[name] = previous
                rendered.append(previous[1])
            self._rendered_vms = fresh
        return "".join(header(name, "gauge", help_text) + "".join(lines[index] for lines in rendered)
                       for index, (name, help_text) in enumerate(_VM_FAMILIES))

    def _render_vms_again(self, names: list[str]) -> None:
        """Render the VMs that changed, and forget those that went, so that a scrape finds every VM's lines
        ready: rendering changes by walking every VM cost a coordinator CPU at 10,000 VMs whenever one of
        them changed."""
        vms = self._context.cache.vms
        with self._lock:
            for name in names:
                raw = vms.get(name)
                if raw is None or raw.get(OWN_VALUE) is None:
                    self._rendered_vms.pop(name, None)
                else:
                    self._rendered_vms[name] = (_sources(raw), _render_vm(name, raw))

    def _vm_statistics(self, nodes) -> str:
        per_node = self._rendered_statistics(nodes)
        with self._lock:
            joined_from, section = self._stats_section
            if len(joined_from) == len(per_node) and all(old is new for old, new in zip(joined_from, per_node)):
                return section
        parts = []
        for name, kind, help_text in _VM_STAT_FAMILIES:
            parts.append(header(name, kind, help_text))
            parts.extend(rendered.get(name, "") for rendered in per_node)
        section = "".join(parts)
        with self._lock:
            self._stats_section = (tuple(per_node), section)
        return section

    def _rendered_statistics(self, nodes) -> list[dict[str, str]]:
        """Each node's VM statistics lines by family, rendered again only for a record not rendered yet. The
        background pass stops here: it had joined every node's lines (10,000 VMs' worth) into the section on
        each pass that found a new record, which with a record every 10 s from each node was every pass; a
        scrape joins them, once per set of records."""
        per_node = []
        with self._lock:
            for name in sorted(nodes):
                record = nodes[name].get("vm_stats")
                if not record:
                    continue
                kept = self._rendered_stats.get(name)
                if kept is None or kept[0] is not record:
                    kept = (record, _render_vm_statistics(name, record))
                    self._rendered_stats[name] = kept
                per_node.append(kept[1])
            for gone in set(self._rendered_stats) - set(nodes):
                del self._rendered_stats[gone]
        return per_node

    def _storage_families(self) -> str:
        pools = sorted(self._storage().items())
        usage = sorted(self._pool_usage().items())
        parts = [family("pvc_storage_pool_volumes", "gauge", "Volumes in the pool", ("pool",),
                        [((pool,), figures["volumes"]) for pool, figures in pools]),
                 family("pvc_storage_pool_snapshots", "gauge", "Volume snapshots in the pool", ("pool",),
                        [((pool,), figures["snapshots"]) for pool, figures in pools]),
                 family("pvc_storage_pool_provisioned_bytes", "gauge", "Bytes of the pool's volumes as sized",
                        ("pool",), [((pool,), figures["provisioned_bytes"]) for pool, figures in pools])]
        for key, help_text in (("size", "Capacity of the pool, as its storage last reported"),
                               ("used", "Bytes the pool's data takes, as its storage last reported"),
                               ("free", "Bytes the pool can still hold, as its storage last reported")):
            parts.append(family(f"pvc_storage_pool_{key}_bytes", "gauge", help_text, ("pool",),
                                [((pool,), figures[f"{key}_bytes"]) for pool, figures in usage]))
        parts.append(family("pvc_storage_health_delta", "gauge", "What the storage backend's own health (Ceph "
                            "health, OSDs down or near full; a directory's space) takes off health: 0 when healthy",
                            ("backend",), [((backend,), judged["delta"]) for backend, judged in
                                           sorted(self._backend_health().items()) if judged.get("delta") is not None]))
        return "".join(parts)

    def _zookeeper_families(self) -> str:
        servers = sorted(self._zookeeper().items())
        answering = [(server, found["mntr"]) for server, found in servers if found["up"]]
        parts = [family("pvc_zookeeper_up", "gauge", "1 when the ZooKeeper server answered mntr in the last "
                        "round", ("server",), [((server,), 1 if found["up"] else 0) for server, found in servers])]
        for name, key, help_text, scale in _MNTR:
            parts.append(family(name, "gauge", help_text, ("server",),
                                [((server,), float(mntr[key]) * scale) for server, mntr in answering if key in mntr]))
        parts.append(family("pvc_zookeeper_leader", "gauge", "1 on the ensemble's leader (or a standalone server)",
                            ("server",), [((server,), 1 if mntr.get("zk_server_state") in ("leader", "standalone")
                                           else 0) for server, mntr in answering]))
        return "".join(parts)


_VM_FAMILIES = (
    ("pvc_vm_state", "1 for each VM's desired state, labelled with its node"),
    ("pvc_vm_running", "1 while the VM's node reports it running"),
    ("pvc_vm_unknown", "1 while the VM's node cannot say whether it runs"),
    ("pvc_vm_vcpus", "vCPUs the VM is defined with"),
    ("pvc_vm_memory_bytes", "Memory the VM is defined with"),
)


def _sources(raw: dict[str, Any]) -> tuple:
    """The records a VM's lines are rendered from; their identities stand for their contents."""
    return raw.get(OWN_VALUE), raw.get("state"), raw.get("placement"), raw.get("status")


def _render_vm(name: str, raw: dict[str, Any]) -> tuple[str, ...]:
    """One VM's line in each of `_VM_FAMILIES`."""
    spec, status = raw.get(OWN_VALUE) or {}, raw.get("status") or {}
    node = (raw.get("placement") or {}).get("node") or ""
    labels = f'vm="{escape(name)}",node="{escape(node)}"'
    return (f'pvc_vm_state{{{labels},state="{escape(raw.get("state") or "stop")}"}} 1\n',
            f"pvc_vm_running{{{labels}}} {1 if status.get('running') and status.get('node') == node else 0}\n",
            f"pvc_vm_unknown{{{labels}}} {1 if 'running' in status and status.get('running') is None else 0}\n",
            f"pvc_vm_vcpus{{{labels}}} {spec.get('vcpus') or 0}\n",
            f"pvc_vm_memory_bytes{{{labels}}} {(spec.get('memory_mib') or 0) * MIB}\n")


def _render_vm_statistics(node: str, record: dict[str, Any]) -> dict[str, str]:
    """One node's VM statistics record as exposition lines, per family name."""
    lines: dict[str, list[str]] = {name: [] for name, _kind, _help in _VM_STAT_FAMILIES}
    node_label = escape(node)
    vm_count = len(VM_FIELDS)
    for vm, fields in sorted((record.get("vms") or {}).items()):
        values = dict(zip(VM_FIELDS, fields))
        labels = f'vm="{escape(vm)}",node="{node_label}"'
        lines["pvc_vm_cpu_seconds"].append(f"pvc_vm_cpu_seconds_total{{{labels}}} "
                                           f"{number(values.get('cpu_time_ns', 0) / 1e9)}\n")
        lines["pvc_vm_memory_balloon_bytes"].append(f"pvc_vm_memory_balloon_bytes{{{labels}}} "
                                                    f"{values.get('balloon_current_kib', 0) * KIB}\n")
        lines["pvc_vm_memory_used_bytes"].append(f"pvc_vm_memory_used_bytes{{{labels}}} "
                                                 f"{values.get('balloon_rss_kib', 0) * KIB}\n")
        disks = fields[vm_count] if len(fields) > vm_count else {}
        for disk, numbers in sorted(disks.items()):
            device = f'{labels},disk="{escape(disk)}"'
            for field, value in zip(DISK_FIELDS, numbers):
                lines[f"pvc_vm_disk_{field}"].append(f"pvc_vm_disk_{field}_total{{{device}}} {value}\n")
        interfaces = fields[vm_count + 1] if len(fields) > vm_count + 1 else {}
        for interface, numbers in sorted(interfaces.items()):
            device = f'{labels},interface="{escape(interface)}"'
            for field, value in zip(INTERFACE_FIELDS, numbers):
                lines[f"pvc_vm_network_{field}"].append(f"pvc_vm_network_{field}_total{{{device}}} {value}\n")
    return {name: "".join(rendered) for name, rendered in lines.items()}


def _scaled(value: float | None, unit: int) -> float | None:
    return None if value is None else value * unit
