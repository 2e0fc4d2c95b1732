"""Flush a node for maintenance and wait for its flush task to finish, then return it to service.

Usage: python flush_node.py NODE
"""
import sys
import time

import pvc


def wait_for_task(cluster, task_id, timeout=120):
    """Poll the task the leader runs until it is done or failed (a new leader resumes it if this one dies)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = cluster.nodes.task(task_id)
        if task["state"] in ("done", "failed"):
            return task
        time.sleep(0.5)
    raise TimeoutError(f"task {task_id} still {task['state']} after {timeout} s")


node = sys.argv[1]
with pvc.connect() as cluster:
    flush = wait_for_task(cluster, cluster.nodes.flush(node)["id"])
    print(f"flush of {node}: {flush['state']}, now {cluster.nodes.info(node)['domain_state']}")
    ready = wait_for_task(cluster, cluster.nodes.ready(node)["id"])
    print(f"ready of {node}: {ready['state']}, now {cluster.nodes.info(node)['domain_state']}")
