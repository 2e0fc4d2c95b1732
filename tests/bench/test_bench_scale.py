"""A vSphere-sized cluster built for real: `pvc-local up --production-intervals` on test-driver hosts (keepalive
5 s, a node dead after 30 s), 2 coordinators, VMs defined through the API on every node in turn and started.
Prints, as each step ends: time to define and start every VM, ZooKeeper's znodes and data size, memory (RSS and
PSS) per process kind, CPU at rest per process kind and ZooKeeper's writes per second, `vms.list()` median, a
coordinator's cold start to its first complete list, flush (and ready) of one node, recovery of a node powered
off through its BMC (detection, fence, recovery), defines per second from 8 clients, and any node judged dead.
Asserts no timing.

    PVC_SCALE_NODES=96 PVC_SCALE_VMS=10000 PVC_SCALE_REST_S=30 PVC_SCALE_BURST=1000 \\
        pytest -m bench -s tests/bench/test_bench_scale.py

(the defaults shown). The smoke test of the same steps is tests/test_scale_smoke.py.
"""
import time

import pytest

from conftest import started_cluster
from scale_support import Scale, ScaleBench

pytestmark = pytest.mark.bench

SCALE = Scale.from_environment()


@pytest.fixture
def scale_cluster(tmp_path_factory):
    """Stopped whatever happens: `started_cluster` downs it in its finally, which closing it runs."""
    began = time.monotonic()
    clusters = started_cluster(tmp_path_factory.mktemp("scale"), nodes=SCALE.nodes, coordinators=2,
                               timings=SCALE.timings, timeout=SCALE.start_timeout)
    try:
        cluster = next(clusters)
        print(f"\n[bench scale] {SCALE.nodes} test-driver nodes, 2 coordinators, {SCALE.timings} intervals: "
              f"up in {time.monotonic() - began:.1f} s")
        yield cluster
    finally:
        clusters.close()


def test_bench_scale(scale_cluster):
    figures = ScaleBench(scale_cluster, SCALE).run(flush_node="hv2", recovery_node=f"hv{SCALE.nodes}")
    assert figures["judged_dead"] == []
