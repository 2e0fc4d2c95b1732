"""The scale bench, step by step: a local cluster of test-driver hosts filled with VMs through the API, then
measured at rest and through its big operations. One code path serves the bench (`tests/bench/
test_bench_scale.py`, 96 nodes and 10,000 VMs unless told otherwise) and its smoke test in the default suite
(4 nodes, 200 VMs), so that the bench cannot rot unnoticed.

Every figure is printed as its step ends (``[bench scale] ...``) and kept in `ScaleBench.figures`; what each
step checks (every VM running on exactly one host, every list complete, every move done) holds at any size,
and no step asserts a timing.
"""
from __future__ import annotations

import os
import re
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import libvirt

import pvc
from pvc.cli.localcluster.cluster import NODE_MEMORY_MIB
from pvc import schema
from pvc.errors import AlreadyExists, PVCError, Unavailable

from helpers import cluster_store, eventually
from vm_support import vm_xml, wait_for_task

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
VM_MEMORY_MIB = 256
"""A VM's memory, unless a node's share of VMs, doubled, would not fit a simulated node's 64 GiB
(`Scale.vm_memory_mib`): a dead or flushed node's share then still fits on top."""


@dataclass(frozen=True)
class Scale:
    """How big the bench is and how long it looks at the cluster at rest."""

    nodes: int
    vms: int
    rest_s: float
    """The window over which CPU at rest and ZooKeeper's writes are measured."""
    list_calls: int
    burst_defines: int
    """VMs defined at once by `clients` clients, for defines per second."""
    clients: int = 8
    timings: str = "production"
    """The local cluster's intervals: ``production`` (the sample configs': keepalive 5 s) or ``fast``."""
    heavy: int = 0
    """VMs on each of the nodes flushed and recovered (the rest spread evenly over the others), so that those
    operations move as many VMs as the issue asks of them; 0: every node alike."""

    @classmethod
    def from_environment(cls) -> Scale:
        """PVC_SCALE_NODES (96), PVC_SCALE_VMS (10,000), PVC_SCALE_REST_S (30), PVC_SCALE_BURST (1,000),
        PVC_SCALE_HEAVY (500)."""
        return cls(nodes=int(os.environ.get("PVC_SCALE_NODES", 96)), vms=int(os.environ.get("PVC_SCALE_VMS", 10_000)),
                   rest_s=float(os.environ.get("PVC_SCALE_REST_S", 30)), list_calls=20,
                   burst_defines=int(os.environ.get("PVC_SCALE_BURST", 1_000)),
                   heavy=int(os.environ.get("PVC_SCALE_HEAVY", 500)))

    @property
    def start_timeout(self) -> float:
        """Seconds `up` may wait for every node to run, beyond starting them one after another."""
        return 60 + 2 * self.nodes

    @property
    def vm_memory_mib(self) -> int:
        """`VM_MEMORY_MIB`, or less (a multiple of 32) where a node's share is large: 500 VMs a node, to
        flush and recover 500 at once, take 64 MiB each."""
        per_node = max(-(-self.vms // self.nodes), self.heavy)
        return max(32, min(VM_MEMORY_MIB, NODE_MEMORY_MIB // (2 * per_node) // 32 * 32))

    @property
    def bulk_timeout(self) -> float:
        """Seconds an operation over every VM (define, start, list on a cold coordinator) may take."""
        return 120 + 0.2 * self.vms


# -- reading processes, hosts and ZooKeeper from outside ---------------------------------------------------

def process_kinds(local) -> dict[str, list[int]]:
    """The cluster's live processes by kind: zookeeper, pvcapid, pvcnoded, libvirtd, and each host's
    helpers (virsh, the connection that keeps a test-driver host's state; ipmi_sim, its BMC)."""
    kinds: dict[str, list[int]] = {"zookeeper": [], "pvcapid": [], "pvcnoded": [], "libvirtd": [],
                                   "virsh holder": [], "ipmi_sim": []}
    named = {"zookeeper": "zookeeper", "pvcapid": "pvcapid", "pvcnoded": "pvcnoded", "host": "libvirtd",
             "bmc": "ipmi_sim"}
    for role, pid in local.running_processes().items():
        kinds[named[role.split()[0]]].append(pid)
    for node in local.node_names:
        holder = local.host(node).holder_pid
        if holder:
            kinds["virsh holder"].append(holder)
    return kinds


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of every thread of `pid` so far, and of the children it has reaped (a
    pvcnoded's ipmitool runs, which had cost more than the daemon itself); None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return sum(int(value) for value in fields[11:15]) / CLOCK_TICKS


def memory_mib(pid: int) -> tuple[float, float]:
    """``(RSS, PSS)`` of `pid` in MiB: PSS shares each page among the processes that map it, so PSS summed over
    a kind is what that kind really costs, however many copies of the same libraries it maps."""
    found = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split()[:2]
        found[key.rstrip(":")] = int(value) / 1024
    return found["Rss"], found["Pss"]


def zookeeper_mntr(local) -> dict[str, str]:
    """ZooKeeper's ``mntr`` figures of the cluster's (first) server."""
    answer = local.zookeeper(local.zookeeper_names[0]).ask("mntr")
    return dict(line.split("\t", 1) for line in answer.splitlines() if "\t" in line)


def zookeeper_zxid(local) -> int:
    """The last transaction id: each write (a transaction of several writes counts once) advances it by one."""
    answer = local.zookeeper(local.zookeeper_names[0]).ask("srvr")
    return int(re.search(r"Zxid: (0x[0-9a-f]+)", answer).group(1), 16)


def running_by_host(local, nodes: list[str] | None = None) -> dict[str, set[str]]:
    """Each powered host's running domains, asked of its own libvirtd (one bulk call a host): the ground
    truth, not ZooKeeper."""
    found = {}
    for node in nodes or local.node_names:
        host = local.host(node)
        if not host.running:
            continue
        connection = libvirt.open(host.uri)
        try:
            found[node] = {domain.name() for domain in
                           connection.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_RUNNING)}
        finally:
            connection.close()
    return found


def placement_of(by_host: dict[str, set[str]]) -> dict[str, list[str]]:
    """VM name → every host running it."""
    where: dict[str, list[str]] = {}
    for node, names in by_host.items():
        for name in names:
            where.setdefault(name, []).append(node)
    return where


def twice_running(by_host: dict[str, set[str]]) -> dict[str, list[str]]:
    return {name: nodes for name, nodes in placement_of(by_host).items() if len(nodes) > 1}


class CpuMeter:
    """CPU time each kind of the cluster's processes spends between `__init__` and `cores`."""

    def __init__(self, local):
        self.kinds = process_kinds(local)
        self._before = {pid: cpu_seconds(pid) for pids in self.kinds.values() for pid in pids}
        self._began = time.monotonic()

    def seconds(self) -> dict[str, float]:
        """CPU seconds by kind so far (a process gone since counts for nothing)."""
        after = {pid: cpu_seconds(pid) for pid in self._before}
        return {kind: sum(after[pid] - self._before[pid] for pid in pids
                          if self._before[pid] is not None and after[pid] is not None)
                for kind, pids in self.kinds.items()}

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._began


class DeadWatch:
    """Reads every node's daemon state through the API every `interval` seconds for the whole bench, and keeps
    each time a node was seen other than ``run`` (a node judged dead, fenced, or its daemon gone), except the
    node the bench kills once it has."""

    def __init__(self, local, interval: float = 2.0):
        self._client = pvc.connect(local.uris, local.state["api_key"], timeout=30)
        self._interval = interval
        self._stop = threading.Event()
        self.excused: set[str] = set()
        self.seen: list[tuple[float, str, str]] = []
        self.unanswered = 0
        self._thread = threading.Thread(target=self._run, name="dead-watch", daemon=True)
        self._started = time.monotonic()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                nodes = self._client.nodes.list()
            except PVCError:
                self.unanswered += 1
                continue
            for node in nodes:
                if node["daemon_state"] != "run" and node["name"] not in self.excused:
                    self.seen.append((time.monotonic() - self._started, node["name"], node["daemon_state"]))

    def stop(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join()
            self._client.close()


# -- the bench -----------------------------------------------------------------------------------------------

UNAVAILABLE_RETRIES = 5
"""Times a call answered `Unavailable` is asked again while the cluster is being filled."""


def patiently(call: Callable[[], Any], again_means_done: type[PVCError] | None = None) -> None:
    """`call()`, asked again after a second when it answers `Unavailable` (a coordinator's ZooKeeper session
    lost its connection under the load of filling the cluster: the call may or may not have taken effect), as
    a script filling a cluster would; `again_means_done` is the error a repeat gives when the first took."""
    for attempt in range(UNAVAILABLE_RETRIES + 1):
        try:
            call()
            return
        except Unavailable:
            if attempt == UNAVAILABLE_RETRIES:
                raise
            time.sleep(1.0)
        except PVCError as error:
            if attempt and again_means_done is not None and isinstance(error, again_means_done):
                return
            raise


class ScaleBench:
    def __init__(self, cluster, scale: Scale):
        self.cluster, self.local, self.client, self.scale = cluster, cluster.local, cluster.client, scale
        self.figures: dict[str, Any] = {}
        self.names = [f"scale{index:05d}" for index in range(scale.vms)]

    def report(self, key: str, value: Any, line: str) -> None:
        self.figures[key] = value
        print(f"[bench scale] {line}", flush=True)

    def _clients(self) -> list:
        return [pvc.connect(self.local.uris, self.local.state["api_key"], timeout=60)
                for _ in range(self.scale.clients)]

    def _each_by_clients(self, items: list[Any], call: Callable[[Any, Any], None]) -> float:
        """`call(client, item)` for every item, shared among `scale.clients` clients each on a thread of its
        own; the seconds it took. Any failure is raised once every client has stopped."""
        clients = self._clients()
        shares = [items[index::len(clients)] for index in range(len(clients))]

        def work(client, share):
            for item in share:
                call(client, item)

        began = time.monotonic()
        try:
            with ThreadPoolExecutor(len(clients)) as pool:
                for done in [pool.submit(work, client, share) for client, share in zip(clients, shares)]:
                    done.result()
        finally:
            for client in clients:
                client.close()
        return time.monotonic() - began

    def wait_all_running(self, expected: dict[str, str | None], timeout: float) -> dict[str, set[str]]:
        """Until each named VM runs on exactly its node (None: any one host), asked of every host; never two."""
        def settled():
            by_host = running_by_host(self.local)
            doubled = twice_running(by_host)
            assert not doubled, f"VMs running on two hosts: {dict(list(doubled.items())[:10])}"
            where = placement_of(by_host)
            return by_host if all(len(where.get(name, [])) == 1 and (node is None or where[name] == [node])
                                  for name, node in expected.items()) else None
        found = eventually(settled, timeout, interval=0.5)
        if not found:
            where = placement_of(running_by_host(self.local))
            missing = [name for name, node in expected.items()
                       if len(where.get(name, [])) != 1 or (node is not None and where[name] != [node])]
            raise AssertionError(f"{len(missing)} VMs not running where expected after {timeout:g} s, "
                                 f"e.g. {missing[:5]}: {[(name, where.get(name)) for name in missing[:5]]}")
        return found

    # -- building ------------------------------------------------------------------------------------------

    def populate(self, heavy: tuple[str, ...] = ()) -> None:
        """Define every VM through the API on its node (`scale.heavy` on each `heavy` node, the rest spread
        evenly over the others), start each, and wait until every host's libvirtd runs its share."""
        home = self._homes(heavy)
        meter = CpuMeter(self.local)
        define_s = self._each_by_clients(self.names, lambda client, name: patiently(lambda: client.vms.define(
            vm_xml(name, memory_mib=self.scale.vm_memory_mib), target=home[name]), again_means_done=AlreadyExists))
        start_s = self._each_by_clients(self.names, lambda client, name: patiently(lambda: client.vms.start(name)))
        began = time.monotonic()
        self.wait_all_running(home, self.scale.bulk_timeout)
        running_s = time.monotonic() - began
        self.report("populate_s", define_s + start_s + running_s,
                    f"define {self.scale.vms} VMs {define_s:.1f} s ({self.scale.vms / define_s:.1f}/s, "
                    f"{self.scale.clients} clients), start calls {start_s:.1f} s, then all running in libvirt "
                    f"{running_s:.1f} s later: {define_s + start_s + running_s:.1f} s in all")
        spent = meter.seconds()
        self.report("populate_cpu_s", spent, "CPU spent meanwhile (s): " + ", ".join(
            f"{kind} {value:.0f}" for kind, value in spent.items() if value >= 0.5)
            + f"; total {sum(spent.values()):.0f} in {meter.elapsed:.0f} s")
        listed = eventually(lambda: (lambda vms: vms if sum(1 for vm in vms if vm["running"]) == self.scale.vms
                                     else None)(self.client.vms.list()), self.scale.bulk_timeout, 1.0)
        assert listed, "vms.list() never showed every VM running"

    def _homes(self, heavy: tuple[str, ...]) -> dict[str, str]:
        share = self.scale.heavy if heavy else 0
        assert share * (len(heavy) + 1) <= self.scale.vms, f"{self.scale.vms} VMs leave none for the other nodes"
        names = iter(self.names)
        home = {next(names): node for node in heavy for _ in range(share)}
        others = [node for node in self.local.node_names if not share or node not in heavy]
        home.update({name: others[index % len(others)] for index, name in enumerate(names)})
        return home

    # -- at rest ---------------------------------------------------------------------------------------------

    def at_rest(self) -> None:
        """CPU per process kind and ZooKeeper's writes, over `scale.rest_s` seconds in which nobody asks the
        cluster anything (but the dead-node watch's read every 2 s)."""
        meter, zxid_before = CpuMeter(self.local), zookeeper_zxid(self.local)
        time.sleep(self.scale.rest_s)
        spent, zxid_after, elapsed = meter.seconds(), zookeeper_zxid(self.local), meter.elapsed
        kinds = meter.kinds
        cores = {kind: value / elapsed for kind, value in spent.items()}
        total = sum(cores.values())
        self.report("cpu_at_rest_cores", {**cores, "total": total},
                    f"CPU at rest over {elapsed:.0f} s (cores): " + ", ".join(
                        f"{kind} {value:.3f} ({len(kinds[kind])}: {value / max(len(kinds[kind]), 1) * 1000:.1f} "
                        f"ms/s each)" for kind, value in cores.items()) + f"; total {total:.3f} (target < 0.5)")
        writes = (zxid_after - zxid_before) / elapsed
        self.report("zookeeper_writes_per_s", writes,
                    f"ZooKeeper writes at rest: {writes:.1f}/s ({zxid_after - zxid_before} transactions in "
                    f"{elapsed:.0f} s; {writes / self.scale.nodes:.2f}/s a node)")

    def memory(self) -> None:
        kinds = process_kinds(self.local)
        lines, figures = [], {}
        for kind, pids in kinds.items():
            sizes = [memory_mib(pid) for pid in pids]
            rss, pss = sum(size[0] for size in sizes), sum(size[1] for size in sizes)
            figures[kind] = {"count": len(pids), "rss_mib": rss, "pss_mib": pss}
            lines.append(f"{kind} x{len(pids)}: RSS {rss:.0f} MiB (each {rss / max(len(pids), 1):.1f}), "
                         f"PSS {pss:.0f} MiB (each {pss / max(len(pids), 1):.1f})")
        total = sum(figure["pss_mib"] for figure in figures.values())
        self.report("memory_mib", {**figures, "total_pss_mib": total},
                    "memory: " + "; ".join(lines) + f"; total PSS {total:.0f} MiB")

    def zookeeper_size(self) -> None:
        mntr = zookeeper_mntr(self.local)
        figures = {key: int(mntr[key]) for key in ("zk_znode_count", "zk_approximate_data_size", "zk_watch_count",
                                                   "zk_num_alive_connections")}
        self.report("zookeeper", figures,
                    f"ZooKeeper: {figures['zk_znode_count']} znodes, approximate data size "
                    f"{figures['zk_approximate_data_size'] / 1e6:.1f} MB, {figures['zk_watch_count']} watches, "
                    f"{figures['zk_num_alive_connections']} connections")

    # -- reading ---------------------------------------------------------------------------------------------

    def listing(self) -> None:
        timings = []
        for _ in range(self.scale.list_calls):
            began = time.perf_counter()
            listed = self.client.vms.list()
            timings.append((time.perf_counter() - began) * 1000)
            assert len(listed) == self.scale.vms, f"vms.list() gave {len(listed)} of {self.scale.vms} VMs"
        median = statistics.median(timings)
        self.report("list_median_ms", median,
                    f"vms.list() of {self.scale.vms} VMs over {len(timings)} calls: median {median:.0f} ms, "
                    f"min {min(timings):.0f}, max {max(timings):.0f} (target < 100 ms)")

    def cold_start(self) -> None:
        """Stop the coordinator that does not lead, start it, and ask it alone for `vms.list()` until the
        list is complete."""
        leader = self.client.cluster.status()["leader"]
        name = next(name for name in self.local.coordinator_names if name != leader)
        expected = len(self.client.vms.list())
        self.local.stop_daemon("pvcapid", name)
        own = pvc.connect([f"pvc://{self.local.coordinator_address(name)}"], self.local.state["api_key"],
                          timeout=30)
        try:
            began = time.monotonic()
            self.local.start_coordinator(name)
            first_answer = None

            def complete():
                nonlocal first_answer
                try:
                    listed = own.vms.list()
                except Unavailable:
                    return False
                first_answer = first_answer or time.monotonic() - began
                return len(listed) == expected
            assert eventually(complete, self.scale.bulk_timeout, 0.05), f"{name} never listed {expected} VMs"
            complete_s = time.monotonic() - began
        finally:
            own.close()
        self.report("cold_start_s", complete_s,
                    f"coordinator cold start ({name}, standby; leader {leader}): process start to first answer "
                    f"{first_answer:.2f} s, to first complete vms.list() of {expected} VMs {complete_s:.2f} s "
                    f"(target < 3 s); its start-up: "
                    f"{startup_line(self.local._daemon_dir('coordinators', name) / 'pvcapid.log')}")

    # -- big operations --------------------------------------------------------------------------------------

    def flush_and_ready(self, node: str) -> None:
        """Flush `node` (time until its task is done and until its VMs all run elsewhere), then return it to
        service (time until they are all back)."""
        on_node = sorted(running_by_host(self.local, [node])[node])
        began = time.monotonic()
        task = wait_for_task(self.client, self.client.nodes.flush(node), timeout=self.scale.bulk_timeout)
        task_s = time.monotonic() - began
        assert task["state"] == "done", task
        by_host = self.wait_all_running({name: None for name in on_node}, self.scale.bulk_timeout)
        assert not by_host[node], f"{node} still runs {sorted(by_host[node])[:5]} after its flush"
        moved_s = time.monotonic() - began
        self.report("flush_s", moved_s,
                    f"flush of {node} running {len(on_node)} VMs: task done {task_s:.2f} s, all running elsewhere "
                    f"{moved_s:.2f} s (target < 30 s for 500); moved {len(task.get('moved') or [])}")
        began = time.monotonic()
        task = wait_for_task(self.client, self.client.nodes.ready(node), timeout=self.scale.bulk_timeout)
        assert task["state"] == "done", task
        self.wait_all_running({name: node for name in on_node}, self.scale.bulk_timeout)
        back_s = time.monotonic() - began
        self.report("ready_s", back_s, f"ready of {node}: its {len(on_node)} VMs back on it {back_s:.2f} s")

    def recovery(self, node: str, watch: DeadWatch) -> None:
        """Power `node` off through its BMC (ipmitool, as an administrator would): its pvcnoded dies by SIGKILL
        with its host and every VM on it. Until they all run elsewhere, split as the leader's recovery record
        splits it."""
        on_node = sorted(running_by_host(self.local, [node])[node])
        watch.excused.add(node)
        killed_wall, killed = time.time(), time.monotonic()
        bmc = self.local.bmc(node).client
        answered, output = bmc.ipmitool("chassis", "power", "off")
        if not answered:
            # A power cut slower than ipmitool's 1 s resend (a loaded machine) leaves its answer unmatched
            # ("IPMI Request Match NOT FOUND") although it was done: ask, as the fencing policy does.
            answered, output = bmc.power_status()
            assert answered and output.lower() == "chassis power is off", output
        meters: list[CpuMeter] = []
        counted: dict[str, int] = {}

        def ended() -> dict[str, Any] | None:
            found = self.client.nodes.info(node)["recovery"]
            if found and not meters:
                meters.append(CpuMeter(self.local))
                counted.update(zxid=zookeeper_zxid(self.local),
                               packets=int(zookeeper_mntr(self.local)["zk_packets_received"]))
            return found if found and found["state"] in ("done", "failed") else None
        recovery = eventually(ended, self.scale.bulk_timeout, 0.1)
        assert recovery and recovery["state"] == "done", self.client.nodes.info(node)["recovery"]
        self.wait_all_running({name: None for name in on_node}, self.scale.bulk_timeout)
        all_running = time.monotonic() - killed
        spent = meters[0].seconds()
        writes = zookeeper_zxid(self.local) - counted["zxid"]
        requests = int(zookeeper_mntr(self.local)["zk_packets_received"]) - counted["packets"]
        task = self.client.nodes.task(recovery["id"])
        detection = task["created"] - killed_wall
        self.report("recovery_s", {"all_running": all_running, "detection": detection,
                                   "fence": recovery["fence_s"], "recovery": recovery["recovery_s"]},
                    f"recovery of {node} running {len(on_node)} VMs (powered off through its BMC): all running "
                    f"elsewhere {all_running:.2f} s after = detection {detection:.2f} s + fence "
                    f"{recovery['fence_s']:.2f} s + recovery {recovery['recovery_s']:.2f} s (+ "
                    f"{all_running - detection - recovery['fence_s'] - recovery['recovery_s']:.2f} s until seen "
                    f"running); fence plus recovery target < 10 s; {len(recovery['moved'])} restarted")
        print(f"[bench scale]   recovery's pace: {self._pace(on_node)}; CPU from its record until all ran "
              f"({meters[0].elapsed:.1f} s): " + ", ".join(f"{kind} {value:.1f} s" for kind, value in spent.items()
                                                         if value >= 0.05)
              + f"; ZooKeeper meanwhile {writes} writes, {requests} requests ({requests / len(on_node):.0f} a VM)",
              flush=True)

    def _pace(self, names: list[str]) -> str:
        """When the leader recorded each VM's new placement and how long its new node took to report it
        running, from ZooKeeper's own modification times of the two keys (one clock: the server's)."""
        with cluster_store(self.local) as store:
            pending = [(store.zk.exists_async(schema.vm_key(name, "placement")),
                        store.zk.exists_async(schema.vm_key(name, "status"))) for name in names]
            stats = [(placed.get(), reported.get()) for placed, reported in pending]
        stamps = [(placed.mtime / 1000, reported.mtime / 1000) for placed, reported in stats if placed and reported]
        if not stamps:
            return "no records"
        first = min(placed for placed, _ in stamps)
        offsets = sorted(placed - first for placed, _ in stamps)
        waits = sorted(reported - placed for placed, reported in stamps)
        return (f"placements recorded over {offsets[-1]:.2f} s (half by {statistics.median(offsets):.2f} s); a start "
                f"reported running {statistics.median(waits):.2f} s after its placement (median), p90 "
                f"{waits[len(waits) * 9 // 10]:.2f} s, max {waits[-1]:.2f} s")

    def burst_defines(self) -> None:
        names = [f"burst{index:05d}" for index in range(self.scale.burst_defines)]
        took = self._each_by_clients(names, lambda client, name: client.vms.define(
            vm_xml(name, memory_mib=self.scale.vm_memory_mib)))
        listed = {vm["name"] for vm in self.client.vms.list()}
        assert set(names) <= listed, f"{len(set(names) - listed)} defined VMs not listed"
        self.report("defines_per_s", len(names) / took,
                    f"{len(names)} defines from {self.scale.clients} clients: {took:.1f} s, "
                    f"{len(names) / took:.1f}/s (target > 200/s)")

    def dead_nodes(self, watch: DeadWatch) -> None:
        """Nodes ever seen other than ``run`` (but the one killed), and recoveries of any other node."""
        others = [task for task in self.client.nodes.tasks()
                  if task["kind"] == "recover" and task["node"] not in watch.excused]
        judged = sorted({(node, state) for _at, node, state in watch.seen})
        self.report("judged_dead", judged,
                    f"nodes judged dead or not running during the bench: {judged or 'none'}"
                    f"{f', first at {watch.seen[0][0]:.0f} s' if watch.seen else ''}; recoveries of other nodes: "
                    f"{len(others)}; node list unanswered {watch.unanswered} times")

    def run(self, flush_node: str, recovery_node: str) -> dict[str, Any]:
        watch = DeadWatch(self.local)
        try:
            self.populate(heavy=(flush_node, recovery_node))
            self.zookeeper_size()
            self.memory()
            self.at_rest()
            self.listing()
            self.cold_start()
            self.flush_and_ready(flush_node)
            self.recovery(recovery_node, watch)
            self.burst_defines()
            self.dead_nodes(watch)
        finally:
            watch.stop()
        return self.figures


def startup_line(log_path: Path) -> str:
    """What a coordinator says of its start-up phases (`pvc.rpc.coordinator`)."""
    lines = [line for line in log_path.read_text().splitlines() if " serving at " in line]
    return lines[-1].split("; start-up: ", 1)[-1] if lines else "(no start-up line in the log)"
