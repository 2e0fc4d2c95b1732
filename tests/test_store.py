"""The ZooKeeper store against a real ZooKeeper: atomic transactions, the schema version, ACLs, leader writes."""
import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError

from pvc import schema
from pvc.errors import AlreadyExists, NotLeader
from pvc.store import Store

from conftest import ZK_PASSWORD, ZK_USER


@pytest.fixture
def outsider(zookeeper_hosts):
    """A kazoo client that reaches the same ZooKeeper but holds no credentials."""
    client = KazooClient(hosts=zookeeper_hosts)
    client.start(timeout=10)
    yield client
    client.stop()
    client.close()


def test_a_transaction_with_one_failing_operation_writes_nothing(store):
    store.write(schema.node_key("hv1", "daemon_state"), "run")

    transaction = store.transaction() \
        .create(schema.node("hv2"), {"cpus": 8}) \
        .set(schema.node_key("hv1", "daemon_state"), "stop") \
        .create(schema.node("hv1"), {"cpus": 4})
    with pytest.raises(AlreadyExists, match="hv1"):
        transaction.commit()

    assert store.read(schema.node("hv2")) is None
    assert store.read(schema.node_key("hv1", "daemon_state")) == "run"


def test_a_transaction_commits_all_its_operations(store):
    store.transaction() \
        .create(schema.node("hv1"), {"cpus": 8}) \
        .create(schema.node_key("hv1", "daemon_state"), "init") \
        .commit()

    assert store.read(schema.node("hv1")) == {"cpus": 8}
    assert store.read(schema.node_key("hv1", "daemon_state")) == "init"


def test_the_schema_version_is_stored(store):
    assert store.read(schema.SCHEMA_VERSION_PATH) == schema.SCHEMA_VERSION


def test_a_newer_schema_than_this_pvc_understands_is_refused(store, zookeeper_hosts):
    store.write(schema.SCHEMA_VERSION_PATH, schema.SCHEMA_VERSION + 1)
    older_pvc = Store(zookeeper_hosts, ZK_USER, ZK_PASSWORD)
    with pytest.raises(Exception, match="newer than this PVC understands"):
        older_pvc.start(connect_timeout=10)
    older_pvc.stop()


def test_a_client_without_the_credentials_cannot_read_or_change_pvc_znodes(store, outsider):
    store.write(schema.node("hv1"), {"cpus": 8})
    store.write(schema.node_key("hv1", "keepalive"), {"time": 1})

    for path in (schema.ROOT, schema.CONFIG, schema.SCHEMA_VERSION_PATH, schema.NODES, schema.node("hv1"),
                 schema.node_key("hv1", "keepalive")):
        with pytest.raises(NoAuthError):
            outsider.get(path)
    with pytest.raises(NoAuthError):
        outsider.get_children(schema.NODES)
    with pytest.raises(NoAuthError):
        outsider.set(schema.CONFIG, b'{"maintenance":true}')
    with pytest.raises(NoAuthError):
        outsider.create(schema.node("intruder"), b"{}")
    with pytest.raises(NoAuthError):
        outsider.delete(schema.node_key("hv1", "keepalive"))


def test_znodes_made_by_transactions_locks_and_ephemerals_carry_the_acl(store, outsider):
    store.transaction().create(schema.node("hv1"), {"cpus": 8}).commit()
    store.zk.create(schema.live_coordinator("pvcapid1"), b"{}", ephemeral=True)
    lock = store.lock(schema.vm_lock("vm1"), "test")
    with lock:
        for path in (schema.node("hv1"), schema.live_coordinator("pvcapid1"), schema.vm_lock("vm1")):
            with pytest.raises(NoAuthError):
                outsider.get(path)
        with pytest.raises(NoAuthError):
            outsider.get_children(schema.vm_lock("vm1"))


def test_a_leader_write_with_a_vanished_election_node_is_refused_and_writes_nothing(store):
    election_node = store.zk.create(f"{schema.ELECTION}/contender-", b"", ephemeral=True, sequence=True)
    store.transaction(leader_node=election_node).set(schema.CONFIG, {"maintenance": True}).commit()
    assert store.read(schema.CONFIG) == {"maintenance": True}

    store.zk.delete(election_node)

    transaction = store.transaction(leader_node=election_node) \
        .set(schema.CONFIG, {"maintenance": False}) \
        .create(schema.node("hv1"), {"cpus": 8})
    with pytest.raises(NotLeader):
        transaction.commit()
    assert store.read(schema.CONFIG) == {"maintenance": True}
    assert store.read(schema.node("hv1")) is None
