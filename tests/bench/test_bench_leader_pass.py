"""What one leader tick costs at rest with a vSphere-sized cluster on record (10,000 VMs, 96 nodes, 100 finished
task records), measured in a real coordinator run in this process against the real ZooKeeper, records written
straight into it (no node daemons: a thread writes the 96 keepalives every 5 s, as the nodes would).

Each tick is run twice over, alternately: as an audit (every VM visited, every task record read: what every tick
did before the passes followed the cache's change log, and what a leader still does on taking office and every
`leader_audit_interval`), and as an ordinary tick (only what changed). For each it prints the median wall time
and the ZooKeeper requests the coordinator's session sent during the tick, in total, by kind and by part of the
tick. Prints figures, asserts no timings. Run with `pytest -m bench -s`.
"""
import collections
import contextlib
import os
import statistics
import threading
import time
from unittest import mock

import pytest

import pvc.rpc.coordinator as coordinator_module
from pvc import config, schema
from pvc.rpc.coordinator import Coordinator
from pvc.store import Store

from conftest import ZK_PASSWORD, ZK_USER
from helpers import eventually
from test_bench_cache import NODES, VMS, record_nodes
from test_bench_vms import record_vms

pytestmark = pytest.mark.bench

TASKS = 100
TICKS = 15
KEEPALIVE_S = 5.0
PARTS = {"monitor.check": ("monitor", "check"), "requests.handle": ("requests", "handle"),
         "request_records.tick": ("request_records", "tick"), "tasks.tick": ("tasks", "tick")}
FUNCTIONS = ("record_missing_recoveries", "retry_due_recoveries", "choose_router")


def record_tasks(store: Store, count: int) -> None:
    """Finished flush records, as recent as the leader keeps them (`pvc.rpc.tasks.FINISHED_KEPT`)."""
    transaction = store.transaction()
    now = time.time()
    for index in range(count):
        task_id = f"flush-hv{index % NODES:03d}-{index:08x}"
        transaction.create(schema.task(task_id), {
            "id": task_id, "kind": "flush", "node": f"hv{index % NODES:03d}", "state": "done", "created": now,
            "finished": now, "total": 0, "done": 0, "moved": [], "shut_down": [], "not_moved": [], "errors": []})
    transaction.commit()


class Keepalives:
    """Every node's keepalive rewritten every `KEEPALIVE_S`, from a session of its own, so the leader's monitor
    sees live nodes; `quiet()` holds the writes off while a tick is measured."""

    def __init__(self, hosts: str):
        self._store = Store(hosts, ZK_USER, ZK_PASSWORD, session_timeout=10)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="keepalives", daemon=True)

    def __enter__(self) -> "Keepalives":
        self._store.start(connect_timeout=10)
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join()
        self._store.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                transaction = self._store.transaction()
                for index in range(NODES):
                    transaction.set(schema.node_key(f"hv{index:03d}", "keepalive"), {"time": time.time()})
                transaction.commit()
            self._stop.wait(KEEPALIVE_S)

    @contextlib.contextmanager
    def quiet(self):
        with self._lock:
            yield


class Requests:
    """The ZooKeeper requests a kazoo client sends, by kind and by the part of the tick under way."""

    def __init__(self, zk):
        self._zk = zk
        self._call = zk._call
        self.part = "other"
        self.by_kind: collections.Counter = collections.Counter()
        self.by_part: collections.Counter = collections.Counter()

    def _counted(self, request, async_object):
        self.by_kind[type(request).__name__] += 1
        self.by_part[self.part] += 1
        return self._call(request, async_object)

    def __enter__(self) -> "Requests":
        self._zk._call = self._counted
        return self

    def __exit__(self, *_exc) -> None:
        del self._zk._call


def timed_parts(coordinator: Coordinator, requests: Requests, seconds: collections.Counter):
    """Patches that time each part of `Coordinator._lead` and attribute its requests to it."""
    def timing(label, original):
        def run(*args, **kwargs):
            requests.part, began = label, time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                seconds[label] += time.perf_counter() - began
                requests.part = "other"
        return run
    stack = contextlib.ExitStack()
    for label, (attribute, method) in PARTS.items():
        target = getattr(coordinator, attribute)
        stack.enter_context(mock.patch.object(target, method, timing(label, getattr(target, method))))
    for name in FUNCTIONS:
        stack.enter_context(mock.patch.object(coordinator_module, name,
                                              timing(name, getattr(coordinator_module, name))))
    return stack


def settings(hosts: str) -> dict:
    return config.check({"coordinator_name": "bench", "zookeeper_hosts": hosts, "zookeeper_user": ZK_USER,
                         "zookeeper_password": ZK_PASSWORD, "listen_address": "127.0.0.1:0",
                         "api_keys": ["bench"], "cluster_secret": "bench", "leader_tick": 3600},
                        config.APID_SETTINGS, "bench")


def test_bench_leader_tick_at_rest_with_10000_vms(store, zookeeper_hosts):
    record_vms(store, VMS, node="hv000")
    record_nodes(store, NODES)
    record_tasks(store, TASKS)
    print(f"\n{VMS} VMs, {NODES} nodes and {TASKS} finished tasks on record; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    with Keepalives(zookeeper_hosts) as keepalives:
        began = time.perf_counter()
        coordinator = Coordinator(settings(zookeeper_hosts))
        coordinator.start()
        try:
            leader = eventually(lambda: coordinator.context.leadership.leader_node, 60, 0.1)
            assert leader, "the coordinator leads"
            print(f"coordinator started and leading in {time.perf_counter() - began:.1f} s")
            measure(coordinator, leader, keepalives)
        finally:
            coordinator._shutdown()


def measure(coordinator: Coordinator, leader: str, keepalives: Keepalives) -> None:
    ways = ("audit (every VM and task record: every tick before)", "ordinary tick (what changed)")
    walls = {way: [] for way in ways}
    kinds = {way: collections.Counter() for way in ways}
    parts = {way: collections.Counter() for way in ways}
    seconds = {way: collections.Counter() for way in ways}
    for _ in range(TICKS):
        for way in ways:
            if way.startswith("audit"):
                coordinator.requests._next_audit = coordinator.tasks._next_audit = 0.0
            with keepalives.quiet():
                coordinator.cache.catch_up()
                with Requests(coordinator.store.zk) as requests, timed_parts(coordinator, requests, seconds[way]):
                    began = time.perf_counter()
                    coordinator._lead(leader)
                    walls[way].append((time.perf_counter() - began) * 1000)
                kinds[way] += requests.by_kind
                parts[way] += requests.by_part
    for way in ways:
        print(f"{way}: median {statistics.median(walls[way]):.1f} ms (min {min(walls[way]):.1f}, max "
              f"{max(walls[way]):.1f}); {sum(kinds[way].values()) / TICKS:.1f} ZooKeeper requests per tick")
        print("  requests per tick by kind: " + ", ".join(
            f"{kind} {count / TICKS:.1f}" for kind, count in kinds[way].most_common()))
        print("  by part (requests per tick, mean ms): " + ", ".join(
            f"{part} {parts[way][part] / TICKS:.1f} / {seconds[way][part] * 1000 / TICKS:.1f} ms"
            for part in [*PARTS, *FUNCTIONS, "other"]))
