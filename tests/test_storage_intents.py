"""Storage records come first: a coordinator killed between a volume's record and the storage's action
leaves a state that the next pass (the leader, the next change in the pool, `pvc storage check`) resolves,
so a record always has its image and an image its record."""
import contextlib
import os
import signal
import subprocess
import threading
import time

import pytest

import pvc
from pvc import schema

from conftest import started_cluster
from helpers import cluster_store, eventually
from vm_support import restart_node_daemon, vm_xml

MIB = 1024 * 1024


@pytest.fixture
def file_storage_cluster(tmp_path_factory):
    for running in started_cluster(tmp_path_factory.mktemp("intents"), nodes=1, coordinators=2, storage="file"):
        running.backend = "file"
        running.client.storage.pool_add("pool")
        yield running


def _images(cluster) -> list[str]:
    return sorted(path.name for path in (cluster.local.storage_dir / "pool").iterdir() if path.name != ".snapshots")


def _records(cluster) -> dict[str, str | None]:
    return {volume["name"]: volume["pending"] for volume in cluster.client.storage.volume_list("pool")}


def _kill_coordinator_once_recorded(cluster, action: str, call, node_dies: bool = False) -> None:
    """Freeze the storage node, start `call` through the first coordinator, and kill that coordinator once the
    volume's intent is recorded and its request waits in the node's socket. Then either thaw the node, which
    carries out the request it had got, or (`node_dies`) kill the frozen node, which never does, and start it
    again."""
    local = cluster.local
    first, node = local.coordinator_names[0], local.node_names[0]
    agent_port = int(cluster.client.nodes.info(node)["agent_uri"].rsplit(":", 1)[1])
    node_pid = local.daemon_pid("pvcnoded", node)
    client = pvc.connect(local.uris[0], local.state["api_key"])
    warmed, go = threading.Event(), threading.Event()

    def caller() -> None:
        # The coordinator's thread serving this connection keeps its own to the node agent: the call then
        # reaches the node at once, with no handshake that a frozen node would never answer.
        client.storage.volume_add("pool", "warm", "1M")
        client.storage.volume_remove("pool", "warm")
        warmed.set()
        go.wait()
        _swallow(call, client)
    threading.Thread(target=caller, daemon=True).start()
    assert warmed.wait(30)
    os.kill(node_pid, signal.SIGSTOP)
    try:
        go.set()
        with cluster_store(local) as store:
            assert eventually(lambda: action in str(store.read(schema.volume("pool", "cut"))), 10), \
                f"the {action} intent was recorded first"
        assert eventually(lambda: _bytes_waiting(agent_port), 10), "the request reached the node's socket"
        local.stop_daemon("pvcapid", first, kill=True)
        if node_dies:
            local.stop_daemon("pvcnoded", node, kill=True)
    finally:
        with contextlib.suppress(ProcessLookupError):  # a killed node is gone
            os.kill(node_pid, signal.SIGCONT)
    if node_dies:
        assert _images(cluster) == [], "the node died before it acted"
        restart_node_daemon(cluster, node)


def _bytes_waiting(port: int) -> bool:
    """Whether a connection to `port` holds received bytes its (frozen) listener has not read."""
    shown = subprocess.run(["ss", "-tnH", "state", "established", f"( sport = :{port} )"], capture_output=True,
                           text=True, check=True).stdout
    return any(int(line.split()[0]) > 0 for line in shown.splitlines())


def _swallow(call, client) -> None:
    try:
        call(client)
    except Exception:
        pass


def _settled(cluster) -> bool:
    try:
        records = _records(cluster)
    except Exception:
        return False
    return all(pending is None for pending in records.values()) and sorted(records) == _images(cluster)


def test_a_create_whose_coordinator_dies_after_the_image_is_made_is_kept_and_its_intent_cleared(
        file_storage_cluster):
    cluster = file_storage_cluster
    _kill_coordinator_once_recorded(cluster, "create", lambda client: client.storage.volume_add("pool", "cut", "4M"))
    assert eventually(lambda: "cut" in _images(cluster), 10), "the node made the image after its caller died"
    assert _records(cluster) == {"cut": "create"}, "nobody has cleared the intent yet"
    assert eventually(lambda: _settled(cluster), 30), (_records(cluster), _images(cluster))
    assert _records(cluster) == {"cut": None} and _images(cluster) == ["cut"]
    assert cluster.client.storage.volume_info("pool", "cut")["size_bytes"] == 4 * MIB


def test_a_create_cut_off_before_the_image_is_made_is_undone(file_storage_cluster):
    cluster = file_storage_cluster
    _kill_coordinator_once_recorded(cluster, "create", lambda client: client.storage.volume_add("pool", "cut", "4M"),
                                    node_dies=True)
    assert _records(cluster) == {"cut": "create"}, "the record of the creation outlived both daemons"
    assert eventually(lambda: _settled(cluster), 30), (_records(cluster), _images(cluster))
    assert _records(cluster) == {} and _images(cluster) == []


def test_a_clone_cut_off_is_undone_and_storage_check_reports_it(file_storage_cluster):
    cluster = file_storage_cluster
    cluster.client.storage.volume_add("pool", "source", "4M")
    _kill_coordinator_once_recorded(cluster, "clone",
                                    lambda client: client.storage.volume_clone("pool", "source", "cut"))
    assert eventually(lambda: _settled(cluster), 30), (_records(cluster), _images(cluster))
    assert _images(cluster) == ["source"], "a clone cut off midway may be partial: it is undone"


def test_storage_check_resolves_what_a_dead_coordinator_left(file_storage_cluster):
    cluster = file_storage_cluster
    storage = cluster.client.storage
    storage.volume_add("pool", "made", "1M")
    storage.volume_add("pool", "doomed", "1M")
    storage.volume_add("pool", "moving", "1M")
    alive = cluster.local.coordinator_names[0]
    with cluster_store(cluster.local) as store:
        for name, intent in (("made", {"action": "create"}), ("doomed", {"action": "remove"}),
                             ("moving", {"action": "rename", "to": "moved"})):
            record = store.read(schema.volume("pool", name))
            store.write(schema.volume("pool", name), {**record, "intent": {**intent, "coordinator": alive}})
        store.transaction().create(schema.volume("pool", "ghost"),
                                   {"pool": "pool", "name": "ghost", "size_bytes": MIB,
                                    "intent": {"action": "clone", "coordinator": alive}}) \
            .create(schema.volume_snapshots("pool", "ghost"), {}).commit()
    assert eventually(lambda: _records(cluster).get("ghost") == "clone", 5)

    done = storage.check()

    assert sorted(done) == ["pool/doomed: removed", "pool/ghost: its unfinished clone was undone",
                            "pool/made: its creation was finished",
                            "pool/moving: its rename to moved was undone"]
    assert _records(cluster) == {"made": None, "moving": None}
    assert _images(cluster) == ["made", "moving"]
    assert storage.check() == []


def test_the_leader_removes_the_volumes_a_vm_removal_marked_and_keeps_one_a_vm_uses_since(file_storage_cluster):
    """`pvc.rpc.removal` marks a removed VM's volumes in the transaction that forgets the VM; the leader's
    storage check removes them with nobody asking, one that another change held (``remove_after``) too. A volume
    that a VM came to use between the mark and the check is kept, its mark dropped."""
    cluster = file_storage_cluster
    storage = cluster.client.storage
    for name in ("unused", "claimed"):
        storage.volume_add("pool", name, "1M")
    disk = "<disk type='volume' device='disk'><source pool='pool' volume='claimed'/><target dev='sda' bus='scsi'/>" \
        "</disk>"
    cluster.client.vms.define(vm_xml("claimer").replace("</os>", f"</os><devices>{disk}</devices>"), target="hv1")
    storage.volume_add("pool", "held", "1M")
    with cluster_store(cluster.local) as store:
        for name in ("unused", "claimed"):
            record = store.read(schema.volume("pool", name))
            store.write(schema.volume("pool", name), {**record, "intent": {"action": "remove", "removal_of": "gone"}})
        # Held by another change when the VM was forgotten: it goes once that change is over (here, at once).
        store.write(schema.volume("pool", "held"), {**store.read(schema.volume("pool", "held")),
                                                    "remove_after": "gone"})

    assert eventually(lambda: _records(cluster) == {"claimed": None}, 15), _records(cluster)
    assert _images(cluster) == ["claimed"]
    assert storage.volume_info("pool", "claimed")["used_by"] == ["claimer"]


def test_a_restores_intent_is_timed_by_zookeepers_clock_not_by_the_coordinator_that_wrote_it(file_storage_cluster):
    """A restore's new volumes stay recorded as being made for as long as their node may still write them. That
    time counts from the record's creation in ZooKeeper's clock: one coordinator's clock running an hour behind
    the leader's (its ``until`` an hour past) does not let the leader undo a restore its node still writes."""
    cluster = file_storage_cluster
    alive = cluster.local.coordinator_names[0]
    with cluster_store(cluster.local) as store:
        for name, for_s in (("writing", 600.0), ("given_up", 0.5)):
            store.transaction().create(schema.volume("pool", name), {
                "pool": "pool", "name": name, "size_bytes": MIB,
                "intent": {"action": "clone", "coordinator": alive, "for_s": for_s,
                           "until": time.time() - 3600}}) \
                .create(schema.volume_snapshots("pool", name), {}).commit()
    time.sleep(1.0)

    assert cluster.client.storage.check() == ["pool/given_up: its unfinished clone was undone"]
    assert _records(cluster) == {"writing": "clone"}
