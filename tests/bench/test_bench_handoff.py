"""Benchmark of the graceful leadership handoff (`pvc node primary`): three coordinators each beside a node,
leadership handed round the three several times while a client issues commands. Prints the gap between the
old leader letting go and the new one taking over (from their own records), how long `node primary --wait`
took, and the slowest client command during the handoffs; asserts no timings. Run with
`pytest -m bench -s tests/bench/test_bench_handoff.py`. Every figure line starts with "[bench handoff]"."""
import statistics
import threading
import time

import pytest

import pvc as api
from pvc import schema

from conftest import started_cluster
from helpers import cluster_store
from vm_support import vm_xml

pytestmark = pytest.mark.bench
ROUNDS = 6


def test_handoff_gap(tmp_path):
    running = started_cluster(tmp_path / "cluster", nodes=3, coordinators=3, storage="file")
    cluster = next(running)
    try:
        client = cluster.client
        slowest, errors, stop = [0.0], [], threading.Event()

        def busy() -> None:
            other = api.connect(list(client.connection.uris), cluster.local.state["api_key"])
            index = 0
            while not stop.is_set():
                began = time.monotonic()
                try:
                    other.vms.define(vm_xml(f"bench{index % 4}", memory_mib=32))
                    other.vms.remove(f"bench{index % 4}", wait=True)
                except Exception as error:
                    errors.append(repr(error))
                slowest[0] = max(slowest[0], time.monotonic() - began)
                index += 1

        thread = threading.Thread(target=busy, daemon=True)
        thread.start()
        gaps, waits = [], []
        for round_index in range(ROUNDS):
            leader = client.cluster.status()["leader"]
            target = f"pvcapid{(int(leader[-1]) + round_index % 2) % 3 + 1}"
            began = time.monotonic()
            client.nodes.primary(f"hv{target[-1]}")
            while client.cluster.status()["leader"] != target:
                time.sleep(0.05)
            waits.append(time.monotonic() - began)
            time.sleep(0.5)
            with cluster_store(cluster.local) as store:
                record = store.read(schema.LEADER_HANDOFF)
            gaps.append(record["taken"] - record["released"])
        stop.set()
        thread.join(30)
        print(f"[bench handoff] {ROUNDS} handoffs: gap from letting go to taking over median "
              f"{statistics.median(gaps) * 1000:.0f} ms (max {max(gaps) * 1000:.0f} ms); node primary to the new "
              f"leader seen median {statistics.median(waits):.2f} s; slowest client define+remove "
              f"{slowest[0]:.2f} s; client errors {len(errors)}" + "".join(f"\n  {error}" for error in errors))
    finally:
        next(running, None)
