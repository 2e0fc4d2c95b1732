"""Storage records come first: a coordinator killed between a volume's record and the storage's action
leaves a state that the next pass (the leader, the next change in the pool, `pvc storage check`) resolves,
so a record always has its image and an image its record."""
import os
import signal
import threading

import pytest

import pvc
from pvc import schema

from conftest import started_cluster
from helpers import cluster_store, eventually

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


def _kill_coordinator_once_recorded(cluster, action: str, call) -> None:
    """Freeze the storage node, start `call` through the first coordinator, kill that coordinator once the
    volume's intent is recorded, then thaw the node (which carries out the request it had already got)."""
    local = cluster.local
    first = local.coordinator_names[0]
    node_pid = local.daemon_pid("pvcnoded", local.node_names[0])
    client = pvc.connect(local.uris[0], local.state["api_key"])
    os.kill(node_pid, signal.SIGSTOP)
    try:
        threading.Thread(target=lambda: _swallow(call, client), daemon=True).start()
        with cluster_store(local) as store:
            assert eventually(lambda: action in str(store.read(schema.volume("pool", "cut"))), 10), \
                f"the {action} intent was recorded first"
        local.stop_daemon("pvcapid", first, kill=True)
    finally:
        os.kill(node_pid, signal.SIGCONT)


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


def test_a_create_cut_off_by_a_coordinator_crash_is_finished_or_undone(file_storage_cluster):
    cluster = file_storage_cluster
    _kill_coordinator_once_recorded(cluster, "create", lambda client: client.storage.volume_add("pool", "cut", "4M"))
    assert eventually(lambda: _settled(cluster), 30), (_records(cluster), _images(cluster))
    if "cut" in _images(cluster):
        assert cluster.client.storage.volume_info("pool", "cut")["size_bytes"] == 4 * MIB


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
