"""Where a coordinator's cache spends its time with a vSphere-sized cluster on record (10,000 VMs, 96 nodes),
measured in one process against the real ZooKeeper, records written straight into it (no daemons): the cold
load with kazoo's own select and with PVC's poll(2) one, alternately; `vms.list()`'s work done as before
(every record copied, every view built) and as now (views of changed VMs rebuilt), alternately; and a
profile of every thread of a cold load (kazoo answers on threads of its own). Prints figures, asserts no
timings. Run with `pytest -m bench -s`; on a loaded machine compare CPU seconds and medians, not walls.
"""
import contextlib
import cProfile
import io
import os
import pstats
import statistics
import threading
import time
from unittest import mock

import msgpack
import pytest
from kazoo.handlers.threading import SequentialThreadingHandler

from pvc import models
from pvc.cache import OWN_VALUE, ClusterCache, Views
from pvc.rpc.areas.vms import _list_view
from pvc.store import Store
from pvc.zk_select import PollingHandler

from conftest import ZK_PASSWORD, ZK_USER
from test_bench_vms import record_nodes, record_vms

pytestmark = pytest.mark.bench

VMS = 10_000
NODES = 96


def walked(cache: ClusterCache) -> bytes:
    """`vms.list()` as it was: every record copied and every view built again on each call."""
    cache.catch_up()
    views = [models.vm_view(name, raw, detail=False) for name, raw in sorted(cache.vms.snapshot().items())
             if raw.get(OWN_VALUE) is not None]
    return msgpack.packb(views)


def listed(cache: ClusterCache, views: Views) -> bytes:
    """`vms.list()` now (`rpc.areas.vms`), up to the bytes it sends: views rebuilt for changed VMs only."""
    cache.catch_up()
    return msgpack.packb(views.current())


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


def cold_start(hosts: str, stock_select: bool = False, profiles: ThreadProfiles | None = None) -> dict:
    """A new session and cache, loaded and listed once; wall and this process's CPU seconds."""
    handler = SequentialThreadingHandler if stock_select else PollingHandler
    with mock.patch("pvc.store.PollingHandler", handler), profiles or contextlib.nullcontext():
        cpu, began = time.process_time(), time.perf_counter()
        store = Store(hosts, ZK_USER, ZK_PASSWORD, session_timeout=10)
        store.start(connect_timeout=10)
        cache = ClusterCache(store)
        cache.start()
        loaded_s = time.perf_counter() - began
        views = Views(cache.vms, _list_view)
        assert len(msgpack.unpackb(listed(cache, views))) == VMS
        return {"loaded_s": loaded_s, "listed_s": time.perf_counter() - began, "cpu_s": time.process_time() - cpu,
                "store": store, "cache": cache, "views": views}


def test_bench_cache_of_10000_vms_and_96_nodes(store, zookeeper_hosts):
    record_vms(store, VMS, node="elsewhere")
    record_nodes(store, NODES)
    print(f"\n{VMS} VMs and {NODES} nodes on record; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores")

    starts: dict[str, list[dict]] = {"epoll selector per select (kazoo's own)": [], "poll(2)": []}
    for _ in range(2):
        for way, results in starts.items():
            result = cold_start(zookeeper_hosts, stock_select=way != "poll(2)")
            result.pop("store").stop()
            results.append(result)
    for way, results in starts.items():
        print(f"cold start, {way}: loaded in " + ", ".join(f"{r['loaded_s']:.1f}" for r in results)
              + " s; first complete list at " + ", ".join(f"{r['listed_s']:.1f}" for r in results)
              + " s; CPU of this process " + ", ".join(f"{r['cpu_s']:.1f}" for r in results) + " s")

    started = cold_start(zookeeper_hosts)
    cache, views = started["cache"], started["views"]
    try:
        timings: dict[str, list[float]] = {"walk of every record (before)": [], "views of changes (after)": []}
        for _ in range(10):
            for way, values in timings.items():
                began = time.perf_counter()
                walked(cache) if way.startswith("walk") else listed(cache, views)
                values.append((time.perf_counter() - began) * 1000)
        parts = {"catch_up": [], "snapshot": [], "all views": [], "encode": []}
        for _ in range(5):
            marks = [time.perf_counter()]
            cache.catch_up()
            marks.append(time.perf_counter())
            snapshot = cache.vms.snapshot()
            marks.append(time.perf_counter())
            built = [models.vm_view(name, raw, detail=False) for name, raw in sorted(snapshot.items())]
            marks.append(time.perf_counter())
            msgpack.packb(built)
            marks.append(time.perf_counter())
            for part, start, end in zip(parts, marks, marks[1:]):
                parts[part].append((end - start) * 1000)
    finally:
        started["store"].stop()
    for way, values in timings.items():
        print(f"list of {VMS} VMs in process, {way}: median {statistics.median(values):.0f} ms, "
              f"min {min(values):.0f} ms, max {max(values):.0f} ms")
    print("  a walk's parts (median ms): " + ", ".join(f"{part} {statistics.median(values):.1f}"
                                                     for part, values in parts.items()))

    profiles = ThreadProfiles()
    profiled = cold_start(zookeeper_hosts, profiles=profiles)
    profiled["store"].stop()
    print(f"profiled cold start to the first list: {profiled['listed_s']:.1f} s; every thread, by own time "
          f"(waits in lock.acquire are idle threads):")
    print(profiles.report())
