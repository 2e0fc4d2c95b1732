"""Third-party health checks: one every node runs, one the leader coordinator runs for the cluster."""
import os
import threading

import pvc
import pvc.hookspecs


class HangsWhenTold:
    """A node health check that never returns while ``PVC_EXAMPLE_HANG_CHECK`` is set in the daemon's
    environment (a check stuck on a dead NFS mount, say), and is healthy otherwise."""

    description = "hangs forever when PVC_EXAMPLE_HANG_CHECK is set"
    timeout = 3.0
    failure_delta = 7

    def check(self, context):
        if os.environ.get("PVC_EXAMPLE_HANG_CHECK"):
            threading.Event().wait()
        return pvc.hookspecs.HealthResult.healthy("did not hang")


@pvc.hookimpl
def pvc_node_health_checks():
    return {"example-hang": HangsWhenTold()}


class SpareNode:
    """A cluster health check: with fewer than two nodes running and ready, the loss of one more node leaves its
    VMs nowhere to go. A cluster of one node never had a spare, so it is not told so every round."""

    description = "at least two nodes are ready, so that one can fail and its VMs run elsewhere"
    timeout = 2.0
    failure_delta = 5

    def check(self, context):
        nodes = context.node_views()
        ready = sorted(node["name"] for node in nodes
                       if node["daemon_state"] == "run" and node["domain_state"] == "ready")
        if len(ready) >= 2 or len(nodes) < 2:
            return pvc.hookspecs.HealthResult.healthy(f"{len(ready)} of {len(nodes)} nodes ready")
        return pvc.hookspecs.HealthResult(
            20, f"only {len(ready)} of {len(nodes)} nodes ready ({', '.join(ready) or 'none'}): no spare node "
                "to take a failed node's VMs")


@pvc.hookimpl
def pvc_cluster_health_checks():
    return {"example-spare-node": SpareNode()}
