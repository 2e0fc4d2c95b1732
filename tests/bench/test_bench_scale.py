"""A vSphere-sized cluster built for real: `pvc-local up --production-intervals` on test-driver hosts (keepalive
5 s, a node dead after 30 s), 2 coordinators, VMs defined through the API and started: 500 on each of the node
it flushes and the node it recovers, the rest spread evenly over the others. Prints, as each step ends: time to
define and start every VM, ZooKeeper's znodes and data size, memory (RSS and PSS) per process kind, CPU at rest
per process kind and ZooKeeper's writes per second, `vms.list()` median, a coordinator's cold start to its first
complete list, flush (and ready) of one node, recovery of a node powered off through its BMC (detection, fence,
recovery; then its pace, the CPU each process kind spent on it and ZooKeeper's requests per VM), defines per
second from 8 clients, and any node judged dead. Asserts no timing.

    PVC_SCALE_NODES=96 PVC_SCALE_VMS=10000 PVC_SCALE_REST_S=30 PVC_SCALE_BURST=1000 PVC_SCALE_HEAVY=500 \\
        pytest -m bench -s tests/bench/test_bench_scale.py

(the defaults shown). The smoke test of the same steps is tests/test_scale_smoke.py.

`test_bench_checker_at_scale` runs the safety issue's fault checker (process faults) against a cluster filled
the same way (about 100 VMs a node), at the fast intervals its faults are timed for (a node dead after 4 s,
a ZooKeeper session of 2.5 s):

    PVC_SCALE_FAULT_NODES=24 PVC_SCALE_FAULT_VMS=2400 PVC_SCALE_FAULT_SECONDS=300 \\
        PVC_SCALE_MONITOR_INTERVAL=0.5 pytest -m bench -s tests/bench/test_bench_scale.py -k checker

(the defaults shown). Two cores do not hold more at those intervals: 96 nodes lost daemons' sessions while
they started, and 48 had nodes fenced while they were being filled. At the production intervals
(`PVC_SCALE_FAULT_TIMINGS=production`) the faults are timed from those deadlines instead (`faults.timings`:
a libvirtd frozen past 10 s, a daemon paused past its 10 s session, a node found dead after 30 s), which 96
nodes and 10,000 VMs hold:

    PVC_SCALE_FAULT_TIMINGS=production PVC_SCALE_FAULT_NODES=96 PVC_SCALE_FAULT_VMS=10000 \
        PVC_SCALE_FAULT_SECONDS=600 PVC_SCALE_MONITOR_INTERVAL=2 \\
        pytest -m bench -s tests/bench/test_bench_scale.py -k checker

The monitor reads each host every `PVC_SCALE_MONITOR_INTERVAL` seconds (each reading lists about a hundred
domains) and a gap of three intervals between two readings of a host counts against the run; both are printed
with the run.
"""
import dataclasses
import os
import time

import pytest

from conftest import started_cluster
from faults import nemesis
from faults.run import Sampling, run_faults, seconds_from_env, seed_from_env
from scale_support import Scale, ScaleBench

pytestmark = pytest.mark.bench

SCALE = Scale.from_environment()
FAULT_SCALE = dataclasses.replace(SCALE, nodes=int(os.environ.get("PVC_SCALE_FAULT_NODES", 24)),
                                  vms=int(os.environ.get("PVC_SCALE_FAULT_VMS", 2_400)),
                                  timings=os.environ.get("PVC_SCALE_FAULT_TIMINGS", "fast"))


def _scale_cluster(directory, scale: Scale):
    """Stopped whatever happens: `started_cluster` downs it in its finally, which closing it runs."""
    began = time.monotonic()
    clusters = started_cluster(directory, nodes=scale.nodes, coordinators=2, timings=scale.timings,
                               timeout=scale.start_timeout)
    try:
        cluster = next(clusters)
        print(f"\n[bench scale] {scale.nodes} test-driver nodes, 2 coordinators, {scale.timings} intervals: "
              f"up in {time.monotonic() - began:.1f} s")
        yield cluster
    finally:
        clusters.close()


@pytest.fixture
def scale_cluster(tmp_path_factory):
    yield from _scale_cluster(tmp_path_factory.mktemp("scale"), SCALE)


@pytest.fixture
def fault_scale_cluster(tmp_path_factory):
    yield from _scale_cluster(tmp_path_factory.mktemp("scale-faults"), FAULT_SCALE)


def test_bench_scale(scale_cluster):
    figures = ScaleBench(scale_cluster, SCALE).run(flush_node="hv2", recovery_node=f"hv{SCALE.nodes}")
    assert figures["judged_dead"] == []


def test_bench_checker_at_scale(fault_scale_cluster, tmp_path):
    bench = ScaleBench(fault_scale_cluster, FAULT_SCALE)
    bench.populate()
    bench.at_rest()
    interval = float(os.environ.get("PVC_SCALE_MONITOR_INTERVAL", 0.5))
    sampling = Sampling(interval=interval, gap_limit=3 * interval)
    seed = seed_from_env()
    print(f"[bench scale] fault injection seed {seed} (replay with PVC_FAULT_SEED={seed}); the monitor reads "
          f"each of {FAULT_SCALE.nodes} hosts every {sampling.interval:g} s, gaps over {sampling.gap_limit:g} s "
          f"count", flush=True)
    run = run_faults(fault_scale_cluster, seed, seconds_from_env("PVC_SCALE_FAULT_SECONDS", 300), clients=4,
                     fault_weights=nemesis.FAULT_WEIGHTS, kinds=nemesis.PROCESS_KINDS,
                     settle_timeout=FAULT_SCALE.bulk_timeout, sampling=sampling)
    print(run.summary())
    assert not run.inconclusive, f"seed {seed}: {run.inconclusive}"
    assert not run.problems, f"seed {seed}: {len(run.problems)} problems, listed above"
