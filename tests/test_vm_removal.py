"""Removal and rename in order: the record goes only once the VM's node has undefined its domain; a node knows
PVC's domains by PVC's metadata in the domain XML, so after a restart it undefines those whose record is gone
or marked removed, and leaves domains defined by hand alone.

"On a host" is always read from that host's own libvirtd (`host_domains`), never from ZooKeeper.
"""
import contextlib
import os
import signal
import threading
import time
from typing import Iterator

import libvirt
import pytest

from pvc import schema
from pvc.errors import AlreadyExists, Conflict, NotFound
from pvc.node.host_xml import METADATA_NAMESPACE
from pvc.rpc import removal

from helpers import cluster_store, define_vm, eventually, remove_vm
from vm_support import (every_daemon_running_and_no_vms_left, new_uuid, pvc, restart_node_daemon, vm_xml,
                        wait_gone, wait_host_has, wait_running_on)

SETTLE = 3.0
"""Seconds that cover several leader ticks and node passes: long enough for a premature removal to show."""
NO_USERS = lambda _volume: []  # noqa: E731: no VM uses any volume


@pytest.fixture(autouse=True)
def no_vms_left(cluster):
    yield
    every_daemon_running_and_no_vms_left(cluster)


def _record_exists(cluster, name: str) -> bool:
    try:
        cluster.client.vms.info(name)
    except NotFound:
        return False
    return True


def test_a_live_node_undefines_at_once_and_wait_returns_once_the_record_is_gone(cluster):
    vms = cluster.client.vms
    vms.define(vm_xml("quick"), target="hv1")
    vms.start("quick", wait=True)
    wait_running_on(cluster, "quick", "hv1")

    result = pvc(cluster, "vm", "remove", "quick", "--yes", "--wait")

    assert result.exit_code == 0 and result.stdout.strip() == "removed VM quick", result.output
    assert "quick" not in cluster.host_domains("hv1")
    assert not _record_exists(cluster, "quick")


def test_a_vm_removed_and_defined_again_at_once_under_its_name_keeps_its_new_domain(cluster):
    """A domain is destroyed only for a removal ZooKeeper still holds for that VM's UUID: the old VM's removal,
    read late, must not take the new one's domain."""
    vms = cluster.client.vms
    for round_ in range(4):
        uuid = new_uuid()
        vms.define(vm_xml("again", uuid=uuid), target="hv1")
        vms.start("again", wait=True)
        assert pvc(cluster, "vm", "remove", "again", "--yes", "--wait").exit_code == 0
        vms.define(vm_xml("again", uuid=new_uuid()), target="hv1")
        vms.start("again", wait=True)
        time.sleep(SETTLE / 3)
        assert cluster.host_domains("hv1").get("again") is True, f"round {round_}: the new VM's domain was removed"
        assert vms.info("again")["state"] == "start"
        assert pvc(cluster, "vm", "remove", "again", "--yes", "--wait").exit_code == 0


def test_remove_while_the_node_daemon_is_down_leaves_no_domain_behind_once_it_returns(cluster):
    vms = cluster.client.vms
    uuid = new_uuid()
    vms.define(vm_xml("orphan-risk", uuid=uuid), target="hv2")
    vms.start("orphan-risk", wait=True)
    wait_running_on(cluster, "orphan-risk", "hv2")
    cluster.local.stop_daemon("pvcnoded", "hv2")

    assert vms.remove("orphan-risk") == {"name": "orphan-risk", "removed": False, "waiting_for": "hv2"}

    time.sleep(SETTLE)
    assert cluster.host_domains("hv2") == {"orphan-risk": True}, "nobody else touches hv2's domains"
    assert vms.info("orphan-risk")["state"] == "remove", "the record stays until hv2 confirms"
    with pytest.raises(AlreadyExists):
        vms.define(vm_xml("orphan-risk"), target="hv1")
    with pytest.raises(Conflict, match="being removed"):
        vms.start("orphan-risk")
    assert "orphan-risk" in {vm["name"] for vm in vms.list(state="remove")}

    cluster.local.start_node_daemon("hv2")

    wait_gone(cluster, "orphan-risk", timeout=20)
    assert eventually(lambda: not _record_exists(cluster, "orphan-risk"), 10), vms.info("orphan-risk")
    with cluster_store(cluster.local) as store:
        assert store.zk.exists(schema.vm_uuid(uuid)) is None, "its UUID went with the record"
    vms.define(vm_xml("orphan-risk", uuid=uuid), target="hv1")  # name and UUID are free again


def _spec(cluster, vm: str) -> dict | None:
    with cluster_store(cluster.local) as store:
        return store.read(schema.vm(vm))


def _volume_names(cluster, pool: str) -> set[str]:
    return {volume["name"] for volume in cluster.client.storage.volume_list(pool)}


def _define_with_volumes(cluster, vm: str, volumes: list[str], target: str) -> None:
    """Through the define, which (unlike `vm volume add`) lets a second VM name a volume, as a shared disk."""
    disks = "".join(f"<disk type='volume' device='disk'><source pool='{volume.split('/')[0]}' "
                    f"volume='{volume.split('/')[1]}'/><target dev='sd{chr(97 + index)}' bus='scsi'/>"
                    "<shareable/></disk>" for index, volume in enumerate(volumes))
    cluster.client.vms.define(vm_xml(vm).replace("</os>", f"</os><devices>{disks}</devices>"), target=target)


@contextlib.contextmanager
def _sharing(cluster, pool: str, first: str, second: str, node: str) -> Iterator[None]:
    """Pool `pool` with volumes ``own`` and ``shared``: VM `first` uses both, VM `second` the shared one. The
    VMs left and the pool go afterwards."""
    storage = cluster.client.storage
    storage.pool_add(pool)
    try:
        for volume in ("own", "shared"):
            storage.volume_add(pool, volume, "8M")
        for vm, disks in ((first, ["own", "shared"]), (second, ["shared"])):
            _define_with_volumes(cluster, vm, [f"{pool}/{disk}" for disk in disks], node)
        yield
    finally:
        for vm in (first, second):
            if _record_exists(cluster, vm):
                cluster.client.vms.remove(vm, wait=True)
        storage.pool_remove(pool, True)


def test_a_remove_with_its_volumes_while_the_node_is_down_removes_them_with_the_record_and_keeps_a_shared_one(
        cluster):
    """The volumes go with the record, whoever forgets it: here the leader, once the node is back, with no
    client waiting. A volume another VM also uses is kept. (The client had removed the volumes after the VM,
    and a client that gave up or died between the two left them for good.)"""
    with _sharing(cluster, "leaving", "leaver", "stayer", "hv2"):
        cluster.local.stop_daemon("pvcnoded", "hv2")
        try:
            answer = pvc(cluster, "vm", "remove", "leaver", "--yes")
            assert answer.exit_code == 0 and "its volumes are removed then" in answer.stdout, answer.output
            time.sleep(SETTLE)
            assert _volume_names(cluster, "leaving") == {"own", "shared"}, "nothing goes before the node confirms"
        finally:
            restart_node_daemon(cluster, "hv2")
        assert eventually(lambda: not _record_exists(cluster, "leaver"), 20)
        assert eventually(lambda: _volume_names(cluster, "leaving") == {"shared"}, 15), \
            _volume_names(cluster, "leaving")
        assert cluster.client.storage.volume_info("leaving", "shared")["used_by"] == ["stayer"]


def test_an_undefine_after_a_remove_withdraws_the_volumes_removal(cluster):
    """`vm remove` recorded while the node is down names the volumes; a `vm undefine` before the node is back
    keeps them, as it says, though the remove still waits for the node: it removes only what the transaction
    that forgot the VM marked."""
    vms, storage = cluster.client.vms, cluster.client.storage
    storage.pool_add("withdrawn")
    try:
        storage.volume_add("withdrawn", "disk", "8M")
        _define_with_volumes(cluster, "changed-mind", ["withdrawn/disk"], "hv2")
        cluster.local.stop_daemon("pvcnoded", "hv2")
        answers = []
        waiting = threading.Thread(target=lambda: answers.append(vms.remove("changed-mind", volumes=True,
                                                                            wait=True)))
        waiting.start()
        assert eventually(lambda: "remove_volumes" in (_spec(cluster, "changed-mind") or {}), 10)
        assert vms.remove("changed-mind")["removed"] is False

        restart_node_daemon(cluster, "hv2")
        waiting.join(30)
        assert answers and answers[0]["removed"] and answers[0]["volumes_removed"] == [], answers
        assert eventually(lambda: not _record_exists(cluster, "changed-mind"), 20)
        time.sleep(SETTLE)
        assert _volume_names(cluster, "withdrawn") == {"disk"}
    finally:
        if not cluster.local.daemon_pid("pvcnoded", "hv2"):
            cluster.local.start_node_daemon("hv2")
        storage.pool_remove("withdrawn", True)


def test_a_volume_another_change_held_when_its_vm_was_forgotten_goes_once_that_change_is_over(cluster):
    """The transaction that forgets the VM does not mark a volume that carries another change's intent (here one
    left by a coordinator cut off mid-creation); the coordinator removes it once it holds the pool's lock, which
    resolves that intent first."""
    vms, storage = cluster.client.vms, cluster.client.storage
    storage.pool_add("held")
    try:
        for volume in ("plain", "busy"):
            storage.volume_add("held", volume, "8M")
        _define_with_volumes(cluster, "holder-vm", ["held/plain", "held/busy"], "hv1")
        with cluster_store(cluster.local) as store:
            record = store.read(schema.volume("held", "busy"))
            store.write(schema.volume("held", "busy"), {**record, "intent": {
                "action": "create", "coordinator": cluster.local.coordinator_names[0]}})

        answer = pvc(cluster, "vm", "remove", "holder-vm", "--yes", "--wait")

        assert answer.exit_code == 0, answer.output
        assert sorted(answer.stdout.splitlines()) == ["removed VM holder-vm", "removed volume held/busy",
                                                      "removed volume held/plain"]
        assert _volume_names(cluster, "held") == set()
    finally:
        storage.pool_remove("held", True)


def test_a_remove_that_waits_names_the_volumes_removed_and_the_ones_kept(cluster):
    with _sharing(cluster, "named", "named-a", "named-b", "hv1"):
        answer = pvc(cluster, "vm", "remove", "named-a", "--yes", "--wait")

        assert answer.exit_code == 1
        assert answer.stdout.splitlines() == ["removed VM named-a", "removed volume named/own"]
        assert "VM named-a is removed, but these volumes are kept: named/shared (used by VM(s) named-b)" \
            in answer.output
        assert _volume_names(cluster, "named") == {"shared"}


def test_a_forced_remove_answers_at_once_while_the_vms_node_is_frozen_and_the_node_undefines_it_after(cluster):
    """A forced removal is settled when recorded; asking the node to converge is then only a hint (it converges
    on its own watch), so a frozen agent must not hold the answer for its call timeout: it answered after 4.3 s
    before. The daemon is held well under the keepalive deadline (a node is dead after 4 s)."""
    vms = cluster.client.vms
    vms.define(vm_xml("frozen-home"), target="hv2")
    vms.start("frozen-home", wait=True)
    wait_running_on(cluster, "frozen-home", "hv2")
    daemon = cluster.local.daemon_pid("pvcnoded", "hv2")
    os.kill(daemon, signal.SIGSTOP)
    try:
        began = time.monotonic()
        answer = vms.remove("frozen-home", force=True)
        answered_s = time.monotonic() - began
    finally:
        os.kill(daemon, signal.SIGCONT)

    assert answer == {"name": "frozen-home", "removed": True}
    assert answered_s < 1.0, f"the forced remove answered after {answered_s:.2f} s"
    wait_gone(cluster, "frozen-home", timeout=20)


def test_after_a_restart_a_node_undefines_pvcs_domains_without_a_record_and_keeps_those_defined_by_hand(cluster):
    vms = cluster.client.vms
    uri = cluster.local.host("hv3").uri
    vms.define(vm_xml("deleted-behind"), target="hv3")
    vms.start("deleted-behind", wait=True)
    define_vm(uri, "by-hand", memory_mib=256, vcpus=1)
    try:
        wait_host_has(cluster, "hv3", {"deleted-behind": True, "by-hand": True})
        cluster.local.stop_daemon("pvcnoded", "hv3")
        with cluster_store(cluster.local) as store:
            uuid = store.read(schema.vm("deleted-behind"))["uuid"]
            removal.delete(store, "deleted-behind", uuid)

        cluster.local.start_node_daemon("hv3")

        wait_host_has(cluster, "hv3", {"by-hand": True}, timeout=20)
        time.sleep(SETTLE)
        assert cluster.host_domains("hv3") == {"by-hand": True}, "a domain without PVC's metadata stays"
    finally:
        remove_vm(uri, "by-hand")


def test_the_domain_carries_pvcs_metadata_naming_the_vm(cluster):
    vms = cluster.client.vms
    uuid = new_uuid()
    vms.define(vm_xml("marked", uuid=uuid), target="hv1")
    assert eventually(lambda: "marked" in cluster.host_domains("hv1"), 10)
    connection = libvirt.open(cluster.local.host("hv1").uri)
    try:
        element = connection.lookupByName("marked").metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                                                             METADATA_NAMESPACE)
    finally:
        connection.close()
    assert 'name="marked"' in element and f'uuid="{uuid}"' in element


def test_rename_while_the_node_daemon_is_down_keeps_the_old_name_until_the_node_undefines_it(cluster):
    vms = cluster.client.vms
    uuid = new_uuid()
    vms.define(vm_xml("before", uuid=uuid), target="hv1")
    wait_host_has(cluster, "hv1", {"before": False}, timeout=10)
    cluster.local.stop_daemon("pvcnoded", "hv1")

    renamed = vms.rename("before", "after")

    assert renamed["name"] == "after" and renamed["uuid"] == uuid
    time.sleep(SETTLE)
    assert cluster.host_domains("hv1") == {"before": False}
    assert vms.info("before")["state"] == "remove", "the old name is held until its domain is gone"

    cluster.local.start_node_daemon("hv1")

    wait_host_has(cluster, "hv1", {"after": False}, timeout=20)
    assert eventually(lambda: not _record_exists(cluster, "before"), 10)
    assert vms.info("after")["uuid"] == uuid
    with cluster_store(cluster.local) as store:
        assert store.read(schema.vm_uuid(uuid)) == "after"
    vms.start("after", wait=True)
    wait_running_on(cluster, "after", "hv1")


def test_a_removal_waiting_on_a_fenced_or_vanished_node_is_finished_without_its_report(store):
    """The leader's rule, on a hand-made record: only a confirmation of this very removal from the VM's node,
    or that node fenced (confirmed off), lets the record go."""
    uuid = new_uuid()
    store.write(schema.node("hv9"), {"name": "hv9"})
    store.write(schema.node_key("hv9", "daemon_state"), "run")
    store.transaction() \
        .create(schema.vm_uuid(uuid), "gone") \
        .create(schema.vm("gone"), {"name": "gone", "uuid": uuid}) \
        .create(schema.vm_key("gone", "state"), "remove") \
        .create(schema.vm_key("gone", "placement"), {"node": "hv9", "last_node": None}) \
        .create(schema.vm_key("gone", "status"), {"node": "hv9", "running": True}) \
        .commit()

    assert removal.finish(store, "gone", NO_USERS) is False
    state_zxid = store.zk.exists(schema.vm_key("gone", "state")).mzxid
    store.write(schema.vm_key("gone", "status"), {"node": "hv9", "running": False, "removed": True,
                                                  "request": {"kind": "forget", "state_zxid": state_zxid - 1}})
    assert removal.finish(store, "gone", NO_USERS) is False, "a report about an earlier removal does not count"

    store.write(schema.node_key("hv9", "daemon_state"), "fenced")
    assert removal.finish(store, "gone", NO_USERS) is True
    assert store.zk.exists(schema.vm("gone")) is None and store.zk.exists(schema.vm_uuid(uuid)) is None
