"""The storage health check on each backend: a Ceph whose OSD stops raises a storage fault on the nodes
using it, cleared once the OSD is back; a file pool with room raises nothing."""
from helpers import eventually


def storage_fault(cluster):
    return next((fault for fault in cluster.client.cluster.faults() if fault["id"] == "node.hv1.storage"), None)


def test_a_stopped_osd_is_a_storage_fault_until_it_runs_again(storage_cluster, private_ceph):
    if storage_cluster.backend == "file":
        assert eventually(lambda: storage_cluster.client.nodes.info("hv1")["health"] == 100, timeout=10)
        assert storage_fault(storage_cluster) is None, "a file pool with room is healthy"
        return
    private_ceph.stop_osd()
    try:
        # Ceph first reports its placement groups degraded, and the OSD down once its heartbeat grace is over.
        fault = eventually(lambda: "OSDs down" in (storage_fault(storage_cluster) or {}).get("message", "")
                           and storage_fault(storage_cluster), timeout=60)
        health = storage_cluster.client.nodes.info("hv1")["health"]
    finally:
        private_ceph.start_osd()
    assert fault and "1 of 1 OSDs down" in fault["message"] and fault["severity"] == "critical", fault
    assert health <= 50
    assert eventually(lambda: storage_fault(storage_cluster) is None, timeout=40), storage_fault(storage_cluster)
