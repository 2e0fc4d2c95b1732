"""A record another caller deletes between a coordinator's look at it and its change to it is `NotFound` naming
the fault or network, never ZooKeeper's own error: that one crosses the wire as `Unavailable`, which tells the
caller that ZooKeeper failed and to try again, when trying again can only find nothing.

A coordinator's cluster and networks areas run here over a real ZooKeeper; the test deletes the record at the
moment between the coordinator's read of its view and its read of the record itself, as a raiser's prune or a
removal through another coordinator does."""
import time

import Pyro5.api
import pytest

from pvc import schema
from pvc.cache import ClusterCache
from pvc.errors import NotFound
from pvc.rpc.areas.cluster import ClusterArea
from pvc.rpc.areas.networks import NetworksArea
from pvc.rpc.context import CoordinatorContext

from helpers import eventually

FAULT = "node.hv1.bmc"


@pytest.fixture
def context(store, monkeypatch):
    """A coordinator's context, called here outside any Pyro call: a correlation id an earlier test's client
    left on this thread would make every call a replay of the first (`pvc.rpc.retries`)."""
    monkeypatch.setattr(Pyro5.api.current_context, "correlation_id", None)
    cache = ClusterCache(store)
    cache.start()
    return CoordinatorContext("test-coordinator", {}, store, cache, plugins=None, agents=None, leadership=None)


def test_acknowledging_a_fault_pruned_meanwhile_is_not_found(store, context, monkeypatch):
    now = time.time()
    store.write(schema.fault(FAULT), {"id": FAULT, "source": "hv1", "check": "bmc", "severity": "warning",
                                      "delta": 10, "message": "BMC does not answer", "count": 1,
                                      "first_seen": now, "last_seen": now, "cleared": now})
    assert eventually(lambda: any(view["id"] == FAULT for view in context.fault_views()), 5)
    views = context.fault_views

    def read_then_pruned():
        seen = views()
        store.zk.delete(schema.fault(FAULT), recursive=True)
        return seen
    monkeypatch.setattr(context, "fault_views", read_then_pruned)

    with pytest.raises(NotFound, match=f"^no fault {FAULT} "):
        ClusterArea(context).fault_ack([FAULT])


def test_changing_a_network_removed_meanwhile_is_not_found(store, context, monkeypatch):
    networks = NetworksArea(context)
    for vni in (4100, 4101, 4102):
        networks.add(vni, "managed", ipv4_network=f"169.254.{vni - 3900}.0/24",
                     ipv4_gateway=f"169.254.{vni - 3900}.1")
    require = networks._require

    def read_then_removed(vni):
        found = require(vni)
        store.zk.delete(schema.network(found["vni"]), recursive=True)
        return found
    monkeypatch.setattr(networks, "_require", read_then_removed)

    with pytest.raises(NotFound, match="^no network 4100 "):
        networks.dhcp_add(4100, "52:54:00:12:34:56", "169.254.200.10")
    with pytest.raises(NotFound, match="^no network 4101 "):
        networks.remove(4101)
    with pytest.raises(NotFound, match="^no network 4102"):
        networks.modify(4102, mtu=1400)
