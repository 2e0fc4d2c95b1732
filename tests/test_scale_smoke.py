"""The scale bench (`tests/bench/test_bench_scale.py`) at 4 nodes and 200 VMs, in the default suite so that the
bench cannot rot: the same steps, each checking what it checks at any size (every VM on exactly one host, lists
complete, flush, ready and recovery done), and no timing asserted. It runs at the local cluster's fast intervals:
at the sample configs' (keepalive 5 s, a node dead after 30 s) the recovery alone would take most of a minute."""
import pytest

from scale_support import Scale, ScaleBench

SMOKE = Scale(nodes=4, vms=200, rest_s=2, list_calls=5, burst_defines=40, timings="fast", heavy=60)


@pytest.mark.cluster(nodes=SMOKE.nodes, coordinators=2)
def test_scale_bench_at_4_nodes_and_200_vms(fresh_cluster):
    figures = ScaleBench(fresh_cluster, SMOKE).run(flush_node="hv2", recovery_node="hv4")

    assert figures["judged_dead"] == []
    assert figures["zookeeper"]["zk_znode_count"] > SMOKE.vms
    assert figures["memory_mib"]["pvcnoded"]["count"] == SMOKE.nodes
    assert figures["memory_mib"]["pvcapid"]["count"] == 2
