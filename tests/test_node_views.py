"""A coordinator's node views are kept from call to call, and still show every node's latest keepalive and the
health its faults leave it: a view changes with its node's record, and every view with the faults."""
import time

from pvc import schema

from helpers import eventually


def _view(context, node: str) -> dict:
    return next((view for view in context.node_views() if view["name"] == node), {})


def test_a_node_view_follows_its_keepalive_and_its_faults(store, context):
    for node in ("hv1", "hv2"):
        store.write(schema.node(node), {"cpus": 8, "memory_total_mib": 16384})
        store.write(schema.node_key(node, "keepalive"), {"memory_free_mib": 1000})
    assert eventually(lambda: _view(context, "hv2").get("memory_free_mib") == 1000, 5)
    assert _view(context, "hv1")["health"] == 100

    store.write(schema.node_key("hv1", "keepalive"), {"memory_free_mib": 900})
    assert eventually(lambda: _view(context, "hv1").get("memory_free_mib") == 900, 5), "a new keepalive not shown"
    assert _view(context, "hv2")["memory_free_mib"] == 1000

    now = time.time()
    store.write(schema.fault("node.hv1.bmc"), {"id": "node.hv1.bmc", "source": "hv1", "check": "bmc",
                                               "severity": "warning", "delta": 10, "message": "BMC silent",
                                               "count": 1, "first_seen": now, "last_seen": now, "cleared": None})
    assert eventually(lambda: _view(context, "hv1").get("health") == 90, 5), "a new fault not counted"
    assert _view(context, "hv2")["health"] == 100
    assert context.node_view("hv1")["health"] == 90, "one node's view lags the list of them"

    store.write(schema.node_key("hv1", "keepalive"), {"memory_free_mib": 800})
    assert eventually(lambda: context.node_view("hv1")["memory_free_mib"] == 800, 5), "one node's view is stale"
    assert context.node_view("hv3") is None

    view, single = _view(context, "hv1"), context.node_view("hv1")
    view["memory_free_mib"] = single["memory_free_mib"] = 0
    assert _view(context, "hv1")["memory_free_mib"] == 800, "a caller's change reached the kept view"
    assert context.node_view("hv1")["memory_free_mib"] == 800, "a caller's change reached the kept view"
