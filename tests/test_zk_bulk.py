"""Bulk reads and watches against a real ZooKeeper: every znode's value in one request, a missing one named
as missing, and watches that fire for a change made after the read, even one made before the watch was set;
and a cache that loads many VMs this way and follows them afterwards."""
import threading
import time

from kazoo.exceptions import NoNodeError
from kazoo.protocol.states import EventType

from pvc import schema, zk_bulk
from pvc.cache import BULK_FROM, OWN_VALUE, ClusterCache


def eventually(check, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.02)
    return check()


def test_one_request_reads_each_znode_or_says_it_is_missing(store):
    zk = store.zk
    zk.create("/bulk/a", b"one", makepath=True)
    zk.create("/bulk/b", b"")

    answer, request = zk_bulk.read(zk, ["/bulk/a", "/bulk/missing", "/bulk/b"])
    first, missing, last = answer.get(timeout=5)

    assert first[0] == b"one" and first[1].mzxid == zk.exists("/bulk/a").mzxid
    assert isinstance(missing, NoNodeError)
    assert last[0] == b"" and request.answered_at >= first[1].mzxid


def test_watches_set_after_a_read_fire_for_what_changed_since_it_and_for_what_changes_later(store):
    zk = store.zk
    for name in ("stays", "changed", "later"):
        zk.create(f"/watched/{name}", b"0", makepath=True)
    answer, request = zk_bulk.read(zk, [f"/watched/{name}" for name in ("stays", "changed", "later", "born")])
    answer.get(timeout=5)
    zk.set("/watched/changed", b"1")
    zk.create("/watched/born", b"")
    events: dict[str, list[EventType]] = {}
    lock = threading.Lock()

    def seen(event):
        with lock:
            events.setdefault(event.path, []).append(event.type)

    watches = [(f"/watched/{name}", True, seen) for name in ("stays", "changed", "later")]
    for sent in zk_bulk.watch(zk, request.answered_at, watches + [("/watched/born", False, seen)]):
        sent.get(timeout=5)

    assert eventually(lambda: len(events) == 2), events
    assert events == {"/watched/changed": [EventType.CHANGED], "/watched/born": [EventType.CREATED]}, \
        "what changed between the read and the watch fires at once, and nothing else"
    zk.set("/watched/later", b"1")
    assert eventually(lambda: "/watched/later" in events), events
    assert events["/watched/later"] == [EventType.CHANGED] and "/watched/stays" not in events


def test_a_cache_that_loads_many_vms_in_bulk_follows_them_afterwards(store, zookeeper_hosts):
    names = [f"bulk{index:03d}" for index in range(BULK_FROM * 3)]
    transaction = store.transaction()
    for name in names:
        transaction.create(schema.vm(name), {"name": name}).create(schema.vm_key(name, "state"), "stop")
    transaction.commit()
    cache = ClusterCache(store)
    cache.start()
    assert sorted(cache.vms.names()) == names and cache.vms.get(names[0]) == {OWN_VALUE: {"name": names[0]},
                                                                              "state": "stop"}

    store.write(schema.vm_key(names[1], "state"), "start")
    store.write(schema.vm_key(names[2], "status"), {"running": True})
    store.zk.delete(schema.vm(names[3]), recursive=True)

    cache.catch_up()
    assert cache.vms.get(names[1])["state"] == "start", "a key read in bulk is watched"
    assert cache.vms.get(names[2])["status"] == {"running": True}, "a key missing at the load is watched for"
    assert cache.vms.get(names[3]) is None, "a VM deleted after the load is forgotten"
