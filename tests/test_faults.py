"""Faults in a real ZooKeeper: one record per problem with a count, cleared then pruned, acknowledged until it
happens again, and never raised anew during maintenance."""
from pvc import schema
from pvc.cache import OWN_VALUE
from pvc.health.faults import FaultRaiser, fault_view, health
from pvc.hookspecs import HealthResult


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def raw(store, fault_id):
    return {OWN_VALUE: store.read(schema.fault(fault_id)), "ack": store.read(schema.fault_ack(fault_id))}


def test_a_fault_is_one_record_counted_cleared_acknowledged_and_pruned(store):
    store.zk.ensure_path(schema.node("hv1"))
    clock, maintenance = Clock(), [False]
    raiser = FaultRaiser(store, "hv1", store.transaction, lambda: maintenance[0], retention_s=60, clock=clock)
    fault_id = "node.hv1.bmc"

    raiser.report("bmc", HealthResult(10, "BMC does not answer"))
    clock.now += 5
    raiser.report("bmc", HealthResult(10, "BMC still does not answer"))
    assert store.children(schema.FAULTS) == [fault_id]
    view = fault_view(fault_id, raw(store, fault_id))
    assert (view["count"], view["first_seen"], view["last_seen"]) == (2, 1000.0, 1005.0)
    assert (view["severity"], view["message"], view["node"], view["counts"]) == \
        ("warning", "BMC still does not answer", "hv1", True)
    assert health([view], "hv1") == 90 and health([view], "hv2") == 100

    store.write(schema.fault_ack(fault_id), {"time": clock.now, "occurrence": view["first_seen"]})
    view = fault_view(fault_id, raw(store, fault_id))
    assert view["acknowledged"] and not view["counts"] and health([view]) == 100

    clock.now += 5
    raiser.report("bmc", HealthResult.healthy())
    view = fault_view(fault_id, raw(store, fault_id))
    assert view["cleared"] == 1010.0 and not view["active"]

    clock.now += 5
    raiser.report("bmc", HealthResult(10, "BMC gone again"))
    view = fault_view(fault_id, raw(store, fault_id))
    assert (view["count"], view["first_seen"], view["acknowledged"], view["counts"]) == (1, 1015.0, False, True)

    raiser.report("bmc", HealthResult.healthy())
    maintenance[0] = True
    raiser.report("bmc", HealthResult(10, "BMC gone during maintenance"))
    assert fault_view(fault_id, raw(store, fault_id))["active"] is False
    raiser.report("memory", HealthResult(60, "over committed"))
    assert store.children(schema.FAULTS) == [fault_id]

    clock.now += 61
    assert raiser.prune() == [fault_id]
    assert store.children(schema.FAULTS) == []


def test_a_fault_deleted_meanwhile_is_raised_again_counting_from_one(store):
    store.zk.ensure_path(schema.node("hv1"))
    clock = Clock()
    raiser = FaultRaiser(store, None, store.transaction, lambda: False, clock=clock)
    raiser.report("nodes", HealthResult(25, "hv2 dead"))
    raiser.report("nodes", HealthResult(25, "hv2 dead"))
    store.zk.delete(schema.fault("cluster.nodes"))
    clock.now += 1
    raiser.report("nodes", HealthResult(25, "hv2 dead"))
    record = store.read(schema.fault("cluster.nodes"))
    assert (record["count"], record["first_seen"], record["severity"]) == (1, 1001.0, "warning")
    assert FaultRaiser(store, None, store.transaction, lambda: False).report(
        "nodes", HealthResult(60, "hv2 and hv3 dead"))["count"] == 2
