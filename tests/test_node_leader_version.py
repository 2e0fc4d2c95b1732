"""A node's version check reads the leading coordinator's version only when the coordinators' election
changes: the same answer as reading it every round, without four ZooKeeper requests a round."""
import uuid

from pvc import schema
from pvc.node.health import LeaderVersion

from helpers import eventually


def contend(store, name: str, version: str | None) -> str:
    """Enter the election as kazoo's lock recipe does, with coordinator `name`'s live record (if a version)."""
    if version is not None:
        store.write(schema.live_coordinator(name), {"version": version})
    return store.zk.create(f"{schema.ELECTION}/{uuid.uuid4().hex}__lock__", name.encode(), ephemeral=True,
                           sequence=True, makepath=True)


def test_the_leaders_version_is_read_again_once_the_election_changes_and_not_before(store, mocker):
    leading = contend(store, "pvcapid1", "1.0")
    contend(store, "pvcapid2", "2.0")
    leader_version = LeaderVersion(store, "hv1")
    assert leader_version() == "1.0"
    reads = mocker.spy(store.zk, "get")
    for _round in range(3):
        assert leader_version() == "1.0"
    assert reads.call_count == 0, "the election did not change"

    store.zk.delete(leading)
    assert eventually(lambda: leader_version() == "2.0"), "the standby leads now"


def test_a_leader_that_has_not_recorded_its_version_yet_is_asked_again_next_round(store):
    contend(store, "pvcapid1", None)
    leader_version = LeaderVersion(store, "hv1")
    assert leader_version() is None
    store.write(schema.live_coordinator("pvcapid1"), {"version": "1.0"})
    assert leader_version() == "1.0"
