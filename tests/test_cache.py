"""The coordinator's watched view: it follows other writers, and shows a writer its own write at once."""
import threading
import time

import pytest
from kazoo.client import KazooState

from pvc import schema
from pvc.cache import OWN_VALUE, VMS_RELIST_GAP_S, ClusterCache, Views, WatchedCollection
from pvc.store import Store

from conftest import ZK_PASSWORD, ZK_USER
from tcp_relay import Blackhole


@pytest.fixture
def other_writer(zookeeper_hosts):
    """Another PVC process (a node daemon, another coordinator) writing to the same cluster."""
    writer = Store(zookeeper_hosts, ZK_USER, ZK_PASSWORD, session_timeout=4)
    writer.start(connect_timeout=10)
    yield writer
    writer.stop()


def eventually(check, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


def test_the_cache_loads_what_exists_when_it_starts(store, other_writer):
    other_writer.write(schema.node("hv1"), {"cpus": 8})
    other_writer.write(schema.node_key("hv1", "daemon_state"), "run")

    cache = ClusterCache(store)
    cache.start()

    assert eventually(lambda: (cache.nodes.get("hv1") or {}).get("daemon_state") == "run")
    assert cache.nodes.get("hv1")[OWN_VALUE] == {"cpus": 8}


def test_a_write_by_another_client_appears_in_the_cache(cache, other_writer):
    other_writer.write(schema.node("hv1"), {"cpus": 8})
    assert eventually(lambda: "hv1" in cache.nodes.names())

    other_writer.write(schema.node_key("hv1", "keepalive"), {"time": 1, "load": 0.5})
    assert eventually(lambda: (cache.nodes.get("hv1") or {}).get("keepalive", {}).get("load") == 0.5)

    other_writer.write(schema.node_key("hv1", "keepalive"), {"time": 2, "load": 1.5})
    assert eventually(lambda: cache.nodes.get("hv1")["keepalive"]["load"] == 1.5)

    other_writer.write(schema.CONFIG, {"maintenance": True})
    assert eventually(lambda: cache.config.get() == {"maintenance": True})


def test_refresh_shows_the_writer_its_own_write_at_once(store, cache):
    for load in range(20):
        store.write(schema.node_key("hv1", "keepalive"), {"load": load})
        store.write(schema.node("hv1"), {"cpus": load})
        cache.nodes.refresh("hv1")
        assert cache.nodes.get("hv1")["keepalive"] == {"load": load}
        assert cache.nodes.get("hv1")[OWN_VALUE] == {"cpus": load}

        store.write(schema.CONFIG, {"maintenance": bool(load % 2)})
        cache.config.refresh()
        assert cache.config.get() == {"maintenance": bool(load % 2)}


def test_a_child_this_process_created_is_shown_from_its_transaction_and_followed_from_then_on(store, cache,
                                                                                               other_writer):
    """`written` shows what the transaction wrote without reading it back, and watches from that transaction
    on: a change made after it, even before the watches were set, is followed."""
    for name, changed_before_watching in (("w1", False), ("w2", True)):
        transaction = store.transaction().create(schema.vm(name), {"name": name}) \
            .create(schema.vm_key(name, "state"), "stop")
        transaction.commit()
        assert transaction.zxid == store.zk.exists(schema.vm(name)).czxid, "not the transaction's own id"
        if changed_before_watching:
            other_writer.write(schema.vm_key(name, "state"), "start")
        cache.vms.written(name, {OWN_VALUE: {"name": name}, "state": "stop"}, transaction.zxid)
        assert cache.vms.get(name)[OWN_VALUE] == {"name": name}
        other_writer.write(schema.vm_key(name, "placement"), {"node": "hv1"})
        if not changed_before_watching:
            other_writer.write(schema.vm_key(name, "state"), "start")
        assert eventually(lambda: cache.vms.get(name).get("state") == "start"
                          and cache.vms.get(name).get("placement") == {"node": "hv1"}), (name, cache.vms.get(name))


def test_a_late_watch_never_undoes_a_refresh(store, cache, other_writer):
    other_writer.write(schema.node("hv1"), {"cpus": 1})
    store.write(schema.node("hv1"), {"cpus": 2})
    cache.nodes.refresh("hv1")
    time.sleep(0.3)
    assert cache.nodes.get("hv1")[OWN_VALUE] == {"cpus": 2}


def test_deleting_a_child_removes_it_from_the_cache(cache, other_writer):
    other_writer.write(schema.node("hv1"), {"cpus": 8})
    other_writer.write(schema.node_key("hv1", "daemon_state"), "run")
    other_writer.write(schema.node("hv2"), {"cpus": 8})
    assert eventually(lambda: cache.nodes.names() == ["hv1", "hv2"])

    other_writer.zk.delete(schema.node("hv1"), recursive=True)

    assert eventually(lambda: cache.nodes.names() == ["hv2"])
    assert cache.nodes.get("hv1") is None


def test_a_child_deleted_and_made_again_is_followed(cache, other_writer):
    other_writer.write(schema.node("hv1"), {"cpus": 8})
    assert eventually(lambda: "hv1" in cache.nodes.names())
    other_writer.zk.delete(schema.node("hv1"), recursive=True)
    assert eventually(lambda: "hv1" not in cache.nodes.names())

    other_writer.write(schema.node("hv1"), {"cpus": 16})
    other_writer.write(schema.node_key("hv1", "daemon_state"), "init")
    assert eventually(lambda: (cache.nodes.get("hv1") or {}).get(OWN_VALUE) == {"cpus": 16})
    other_writer.write(schema.node_key("hv1", "daemon_state"), "run")
    assert eventually(lambda: cache.nodes.get("hv1").get("daemon_state") == "run")


def test_the_change_log_names_only_what_changed_since_a_reader_last_looked(cache, other_writer):
    for name in ("hv1", "hv2", "hv3"):
        other_writer.write(schema.node(name), {"cpus": 8})
    cache.catch_up()
    seen, changed = cache.nodes.changes(-1)
    assert sorted(changed) == ["hv1", "hv2", "hv3"], "loaded in the order ZooKeeper answered"
    assert cache.nodes.changes(seen) == (seen, [])

    other_writer.write(schema.node_key("hv2", "daemon_state"), "run")
    other_writer.zk.delete(schema.node("hv3"), recursive=True)
    cache.catch_up()
    later, changed = cache.nodes.changes(seen)
    assert later > seen and changed == ["hv2", "hv3"]
    assert cache.nodes.get("hv3") is None

    cache.nodes.refresh("hv1")
    assert cache.nodes.changes(later) == (later, []), "reading a value again is not a change"


def test_views_are_rebuilt_only_for_what_changed(cache, other_writer):
    built = []

    def view(name, raw):
        built.append(name)
        return {"name": name, "cpus": raw[OWN_VALUE]["cpus"]} if raw.get(OWN_VALUE) else None

    views = Views(cache.nodes, view)
    for name in ("hv1", "hv2"):
        other_writer.write(schema.node(name), {"cpus": 8})
    cache.catch_up()
    assert views.current() == [{"name": "hv1", "cpus": 8}, {"name": "hv2", "cpus": 8}]

    built.clear()
    other_writer.write(schema.node("hv2"), {"cpus": 16})
    other_writer.write(schema.node("hv0"), {"cpus": 4})
    cache.catch_up()
    assert views.current() == [{"name": "hv0", "cpus": 4}, {"name": "hv1", "cpus": 8}, {"name": "hv2", "cpus": 16}]
    assert sorted(built) == ["hv0", "hv2"]

    other_writer.zk.delete(schema.node("hv1"), recursive=True)
    cache.catch_up()
    assert [item["name"] for item in views.current()] == ["hv0", "hv2"]


def test_a_burst_of_new_vms_is_listed_a_few_times_not_once_each_and_shows_without_a_reader(cache, other_writer,
                                                                                          mocker):
    """Each listing carries every VM's name; within `VMS_RELIST_GAP_S` of the last one, new VMs wait for the
    next, which comes by itself (no reader here catches up)."""
    listings = mocker.spy(cache.vms._store.zk, "get_children_async")
    names = [f"burst{index}" for index in range(60)]
    began = time.monotonic()
    for name in names:
        other_writer.write(schema.vm(name), {"name": name})
    written_s = time.monotonic() - began
    assert eventually(lambda: set(names) <= set(cache.vms.names()), timeout=5), "a VM of the burst is not listed"
    most = 2 + written_s / VMS_RELIST_GAP_S
    assert listings.call_count <= most, f"{listings.call_count} listings for {len(names)} VMs in {written_s:.2f} s"


def test_catch_up_shows_every_write_another_client_committed_before_it(cache, other_writer):
    """At rest catch_up returns as soon as no read of the cache awaits its answer; each round here makes the
    cache start reads (a new child, a key created after its child, a changed key) just before catch_up."""
    for index in range(25):
        name = f"vm{index}"
        other_writer.write(schema.vm(name), {"name": name})
        other_writer.write(schema.vm_key(name, "state"), "start")
        other_writer.write(schema.node_key("hv1", "keepalive") if index else schema.node("hv1"), {"time": index})
        cache.catch_up()
        assert (cache.vms.get(name) or {}).get("state") == "start", f"round {index}"
        held = cache.nodes.get("hv1") or {}
        assert (held.get("keepalive") if index else held.get(OWN_VALUE)) == {"time": index}, f"round {index}"


def test_a_cache_of_thousands_of_keys_reads_again_after_a_lost_connection(zookeeper_server, zookeeper_hosts, store):
    """Reconnected, the cache reads every key again, and a write made meanwhile shows. Those reads were once sent
    from kazoo's connection thread, which blocked writing to its own wake-up pipe: after a ZooKeeper quorum
    loss every coordinator hung for good (the lab fault checker)."""
    chroot = zookeeper_hosts.removeprefix(zookeeper_server.hosts)
    link = Blackhole(("127.0.0.1", zookeeper_server.port))
    cut_off = Store(link.hosts + chroot, ZK_USER, ZK_PASSWORD, session_timeout=4)
    suspended = threading.Event()
    cut_off.zk.add_listener(lambda state: suspended.set() if state == KazooState.SUSPENDED else None)
    names = [f"vm{index}" for index in range(1500)]
    for chunk in range(0, len(names), 500):
        batch = store.zk.transaction()
        for name in names[chunk:chunk + 500]:
            batch.create(schema.vm(name), schema.encode({"name": name}))
        batch.commit()
    cut_off.start(connect_timeout=10)
    try:
        vms = WatchedCollection(cut_off, schema.VMS, schema.vm, schema.VM_KEYS)
        vms.start()
        assert len(vms.names()) == len(names)

        link.cut = True
        assert suspended.wait(15), "the cut-off client never noticed the cut"
        store.write(schema.vm_key("vm7", "state"), "stop")
        link.cut = False

        assert eventually(lambda: (vms.get("vm7") or {}).get("state") == "stop", timeout=15), \
            "the cache never read vm7's state written while it was cut off"
        assert cut_off.zk.exists(schema.vm("vm1499")) is not None
        assert eventually(vms.idle, timeout=15)
    finally:
        link.cut = False
        stopping = threading.Thread(target=cut_off.stop, daemon=True)
        stopping.start()
        stopping.join(30)
        link.close()
        store.zk.delete(schema.vm("vm7"), recursive=True)
        for chunk in range(0, len(names), 500):
            batch = store.zk.transaction()
            for name in names[chunk:chunk + 500]:
                if name != "vm7":
                    batch.delete(schema.vm(name))
            batch.commit()
    assert not stopping.is_alive(), "the reconnected client never stopped"
