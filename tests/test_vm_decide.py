"""A command holds its VM's lock while it reads, decides and writes, so what changes the VM meanwhile is no
other command but the leader or a node: a finished move recorded as ``start``, a node's request. The command
decides again on what is there now; it answers `Busy` only when the VM keeps changing under it."""
import pytest

from pvc import schema
from pvc.errors import Busy
from pvc.rpc.areas.vms import VMsArea

from test_vm_wait import define

STATUS = {"node": "hv1", "running": True, "error": None, "time": 0}


def test_a_command_decides_again_on_what_the_leader_wrote_between_its_read_and_its_write(store, cache, control):
    define(store, cache, "arrived", STATUS)
    store.write(schema.vm_key("arrived", "state"), "migrate")
    seen = []

    def decide() -> None:
        read = control.desired("arrived")
        seen.append(read.state)
        if len(seen) == 1:
            store.write(schema.vm_key("arrived", "state"), "start")  # the leader settles the move
        control.record("arrived", read, state="stop")

    control.decided("arrived", decide)

    assert seen == ["migrate", "start"]
    assert control.desired("arrived").state == "stop"


def test_a_vm_that_keeps_changing_under_a_command_answers_busy_and_the_command_writes_nothing(store, cache, control):
    define(store, cache, "restless", STATUS)
    store.write(schema.vm_key("restless", "state"), "start")
    writes = []

    def decide() -> None:
        read = control.desired("restless")
        writes.append(f"leader-{len(writes)}")
        store.write(schema.vm_key("restless", "placement"), {"node": "hv1", "last_node": writes[-1]})
        control.record("restless", read, state="stop")

    with pytest.raises(Busy, match="changed while this command ran"):
        control.decided("restless", decide)

    assert len(writes) == 3
    read = control.desired("restless")
    assert (read.state, read.placement["last_node"]) == ("start", "leader-2"), "the command wrote nothing"


def test_a_removal_decides_again_on_what_the_leader_wrote_between_its_read_and_its_write(store, cache, context,
                                                                                       control, monkeypatch):
    define(store, cache, "leaving", STATUS)
    store.write(schema.vm_key("leaving", "state"), "migrate")
    reads = []
    read_desired = control.desired

    def desired_as_the_leader_settles_the_move(name: str):
        read = read_desired(name)
        reads.append(read.state)
        if len(reads) == 1:
            store.write(schema.vm_key(name, "state"), "start")
        return read

    monkeypatch.setattr(control, "desired", desired_as_the_leader_settles_the_move)

    answer = VMsArea(context, control, None).remove("leaving")

    assert reads == ["migrate", "start"]
    assert answer == {"name": "leaving", "removed": True}, "hv1 is no node, so the record goes without its report"
    assert store.read(schema.vm("leaving")) is None
