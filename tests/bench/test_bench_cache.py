"""Where a coordinator's cache spends its time with a vSphere-sized cluster on record (10,000 VMs, 96 nodes),
measured in one process against the real ZooKeeper, records written straight into it: the cold load, the
first complete list after it, and the steady list (catch-up, views, msgpack encoding). Prints figures and a
profile of every thread (kazoo answers on threads of its own); asserts no timings. Run with `pytest -m bench -s`.
"""
import cProfile
import io
import pstats
import statistics
import threading
import time

import msgpack
import pytest

from pvc import models, schema
from pvc.cache import OWN_VALUE, ClusterCache
from pvc.store import Store

from conftest import ZK_PASSWORD, ZK_USER
from test_bench_vms import record_vms

pytestmark = pytest.mark.bench

VMS = 10_000
NODES = 96


def record_nodes(store: Store, count: int) -> None:
    transaction = store.transaction()
    for index in range(count):
        name = f"hv{index:03d}"
        transaction.create(schema.node(name), {"name": name}) \
            .create(schema.node_key(name, "daemon_state"), "run") \
            .create(schema.node_key(name, "domain_state"), "ready") \
            .create(schema.node_key(name, "keepalive"), {"time": time.time()})
    transaction.commit()


def listed(cache: ClusterCache) -> bytes:
    """What `vms.list()` does on the coordinator, up to the bytes it sends."""
    cache.catch_up()
    views = [models.vm_view(name, raw, detail=False) for name, raw in sorted(cache.vms.snapshot().items())
             if raw.get(OWN_VALUE) is not None]
    return msgpack.packb(views)


class ThreadProfiles:
    """cProfile in every thread started while it is on (a cProfile profiler sees only its own thread)."""

    def __init__(self):
        self.profiles: list[cProfile.Profile] = []

    def _begin(self, *_args) -> None:
        profile = cProfile.Profile()
        self.profiles.append(profile)
        profile.enable()

    def __enter__(self) -> "ThreadProfiles":
        threading.setprofile(self._begin)
        self._begin()
        return self

    def __exit__(self, *_exc) -> None:
        threading.setprofile(None)

    def report(self, top: int = 18) -> str:
        out = io.StringIO()
        stats = pstats.Stats(*self.profiles, stream=out)
        stats.sort_stats("tottime").print_stats(top)
        return out.getvalue()


def cold_start(hosts: str, profiled: bool) -> tuple[float, float, ClusterCache, Store, ThreadProfiles | None]:
    profiles = ThreadProfiles() if profiled else None
    began = time.perf_counter()
    if profiles:
        profiles.__enter__()
    store = Store(hosts, ZK_USER, ZK_PASSWORD, session_timeout=10)
    store.start(connect_timeout=10)
    cache = ClusterCache(store)
    cache.start()
    loaded_s = time.perf_counter() - began
    assert len(msgpack.unpackb(listed(cache))) == VMS
    first_list_s = time.perf_counter() - began
    if profiles:
        profiles.__exit__()
    return loaded_s, first_list_s, cache, store, profiles


def test_bench_cache_of_10000_vms_and_96_nodes(store, zookeeper_hosts):
    record_vms(store, VMS, node="elsewhere")
    record_nodes(store, NODES)

    loaded_s, first_s, cache, cold, _ = cold_start(zookeeper_hosts, profiled=False)
    try:
        timings, parts = [], {"catch_up": [], "snapshot": [], "views": [], "encode": []}
        for _ in range(15):
            began = time.perf_counter()
            listed(cache)
            timings.append((time.perf_counter() - began) * 1000)
        for _ in range(5):
            marks = [time.perf_counter()]
            cache.catch_up()
            marks.append(time.perf_counter())
            snapshot = cache.vms.snapshot()
            marks.append(time.perf_counter())
            views = [models.vm_view(name, raw, detail=False) for name, raw in sorted(snapshot.items())]
            marks.append(time.perf_counter())
            msgpack.packb(views)
            marks.append(time.perf_counter())
            for part, start, end in zip(parts, marks, marks[1:]):
                parts[part].append((end - start) * 1000)
        nodes_listed = len(cache.nodes.names())
    finally:
        cold.stop()
    print(f"\ncold cache of {VMS} VMs and {nodes_listed} nodes: loaded in {loaded_s:.2f} s, first complete list "
          f"encoded at {first_s:.2f} s (target < 3 s with the process's own start)")
    print(f"list of {VMS} VMs in process: median {statistics.median(timings):.0f} ms, min {min(timings):.0f} ms, "
          f"max {max(timings):.0f} ms; parts (median ms): "
          + ", ".join(f"{part} {statistics.median(values):.1f}" for part, values in parts.items()))

    _, profiled_first_s, _, cold, profiles = cold_start(zookeeper_hosts, profiled=True)
    cold.stop()
    print(f"profiled cold start to the first list: {profiled_first_s:.2f} s; all threads, by own time:")
    print(profiles.report())
