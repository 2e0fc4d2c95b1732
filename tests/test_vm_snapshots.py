"""Whole-VM snapshots of real guests on QEMU hosts: one moment across disks, rollback, the pause bounded, and
crashes in the middle.

The guests write a growing sequence number to each of their two disks in turn, every 10 ms or so. What a
snapshot holds is read from outside PVC: the snapshot files and volume files on the host (file backend), the
guest's own console after it boots again, and each host's own libvirtd for whether the guest runs or is paused.
"""
import os
import threading
from pathlib import Path

import libvirt
import pytest

import subprocess

from pvc.cli.localcluster.guest import FSFREEZE_PREFIX, domain_xml, read_sequence, sequences_found
from pvc.errors import PVCError, Unavailable

from conftest import started_cluster
from guest_support import console_text, wait_heartbeat
from helpers import eventually
from vm_support import fence_deadline_beyond_restarts, pvc, restart_node_daemon

pytestmark = pytest.mark.usefixtures("qemu_cluster")

POOL = "vmsnaps"
MiB = 1024 * 1024


@pytest.fixture(scope="module", autouse=True)
def restarts_never_fenced(qemu_cluster):
    fence_deadline_beyond_restarts(qemu_cluster)


def _disk_path(cluster, volume: str, snapshot: str | None = None) -> Path:
    root = Path(cluster.local.storage_dir) / POOL
    return root / ".snapshots" / volume / snapshot if snapshot else root / volume


def _sequences(cluster, vm: str, snapshot: str | None = None) -> tuple[int | None, int | None]:
    return tuple(read_sequence(_disk_path(cluster, f"{vm}-{disk}", snapshot)) for disk in ("a", "b"))


def _domain_state(cluster, node: str, vm: str) -> int:
    connection = libvirt.open(cluster.local.host(node).uri)
    try:
        return connection.lookupByName(vm).state()[0]
    finally:
        connection.close()


def _writing(cluster, vm: str, beyond: int = 0, timeout: float = 60.0) -> int:
    """Wait until the guest's first disk holds a sequence number above `beyond`; that number."""
    found = eventually(lambda: (lambda first: first if first and first > beyond else None)(
        _sequences(cluster, vm)[0]), timeout, interval=0.1)
    assert found, f"guest {vm} writes no sequence number above {beyond}: its disks hold {_sequences(cluster, vm)}"
    return found


def _one_moment(first: int | None, second: int | None) -> bool:
    """Two disks written in turn, read at one moment: the same number, or the second one behind by one."""
    return first is not None and second is not None and first - second in (0, 1)


def _boot_sequence_guest(cluster, vm: str, node: str, fill_mib: int = 0, agent: bool = False) -> None:
    client = cluster.client
    for disk in ("a", "b"):
        client.storage.volume_add(POOL, f"{vm}-{disk}", (16 + fill_mib) * MiB)
        if fill_mib:
            with open(_disk_path(cluster, f"{vm}-{disk}"), "r+b") as volume:
                volume.seek(16 * MiB)
                for _ in range(fill_mib):
                    volume.write(os.urandom(MiB))
    disks = [f"{POOL}/{vm}-a", f"{POOL}/{vm}-b"]
    if agent:
        client.storage.volume_add(POOL, f"{vm}-fs", 16 * MiB)
        disks.append(f"{POOL}/{vm}-fs")
    client.vms.define(domain_xml(vm, disks=disks, sequence=True, agent=agent), target=node)
    client.vms.start(vm)


def _freeze_lines(cluster, vm: str, node: str) -> list[str]:
    return [line.split()[-1] for line in console_text(cluster, vm, node).splitlines()
            if line.startswith(FSFREEZE_PREFIX)]


@pytest.fixture(scope="module")
def guests(qemu_cluster):
    """Two sequence-writing guests booting together: `steady` with small disks on hv1, `bulky` on hv2 with 40
    MiB of data on each disk, so that snapshotting it takes a while."""
    qemu_cluster.client.storage.pool_add(POOL)
    _boot_sequence_guest(qemu_cluster, "steady", "hv1")
    _boot_sequence_guest(qemu_cluster, "bulky", "hv2", fill_mib=40)
    _boot_sequence_guest(qemu_cluster, "agented", "hv3", fill_mib=40, agent=True)
    for vm in ("steady", "bulky", "agented"):
        _writing(qemu_cluster, vm)
    assert eventually(lambda: "pvc-guest: agent started" in console_text(qemu_cluster, "agented", "hv3"), 30), \
        console_text(qemu_cluster, "agented", "hv3")[-2000:]
    return {"steady": "hv1", "bulky": "hv2", "agented": "hv3"}


def test_a_snapshot_of_a_running_guest_is_one_moment_and_a_rollback_boots_into_it(qemu_cluster, guests):
    client = qemu_cluster.client
    _writing(qemu_cluster, "steady", beyond=20)

    created = pvc(qemu_cluster, "vm", "snapshot", "create", "steady", "first", "--format", "json")
    assert created.exit_code == 0, created.output
    held = _sequences(qemu_cluster, "steady", "first")
    assert _one_moment(*held), f"the snapshot's disks hold {held}: not one moment"
    view = client.vms.snapshot_info("steady", "first")
    assert view["paused_ms"] is not None and view["method"] in ("reflink", "sparse copy"), view
    assert _domain_state(qemu_cluster, "hv1", "steady") == libvirt.VIR_DOMAIN_RUNNING, "the guest runs again"

    later = _writing(qemu_cluster, "steady", beyond=held[0] + 20)
    assert later > held[0], "the guest wrote on after the snapshot"

    listed = pvc(qemu_cluster, "storage", "volume", "snapshot", "list", POOL, "steady-a", "--format", "json")
    assert '"vm_snapshot": "steady@first"' in listed.output, listed.output
    alone = pvc(qemu_cluster, "storage", "volume", "snapshot", "remove", POOL, "steady-a", "first", "--yes")
    assert alone.exit_code == 1 and "part of VM snapshot 'steady@first'" in alone.output, alone.output
    assert len(alone.output.strip().splitlines()) == 1, alone.output
    assert _disk_path(qemu_cluster, "steady-a", "first").exists()

    running = pvc(qemu_cluster, "vm", "snapshot", "rollback", "steady", "first", "--yes")
    assert running.exit_code == 1 and "stop it before rolling it back" in running.output, running.output

    client.vms.stop("steady", wait=True)
    unasked = pvc(qemu_cluster, "vm", "snapshot", "rollback", "steady", "first")
    assert unasked.exit_code == 1 and "not confirmed" in unasked.output, unasked.output
    assert _sequences(qemu_cluster, "steady") != held, "nothing was rolled back without confirmation"

    rolled = pvc(qemu_cluster, "vm", "snapshot", "rollback", "steady", "first", "--yes")
    assert rolled.exit_code == 0, rolled.output
    assert _sequences(qemu_cluster, "steady") == held, "the volumes hold the snapshot's data again"

    booted_before = len(console_text(qemu_cluster, "steady", "hv1"))
    client.vms.start("steady", wait=True)
    wait_heartbeat(qemu_cluster, "steady", "hv1", after=0,
                   boot_id=None, timeout=60)

    def found_at_boot():
        found = sequences_found(console_text(qemu_cluster, "steady", "hv1")[booted_before:])
        return found if len(found) == 2 else None
    found = eventually(found_at_boot, 60, interval=0.2)
    assert found == {"vda": held[0], "vdb": held[1]}, f"the guest booted finding {found}, the snapshot held {held}"

    removed = pvc(qemu_cluster, "vm", "snapshot", "remove", "steady", "first", "--yes")
    assert removed.exit_code == 0, removed.output
    assert client.vms.snapshot_list("steady") == []
    assert not _disk_path(qemu_cluster, "steady-a", "first").exists()
    assert all(row["name"] != "first" for row in client.storage.snapshot_list(POOL))


def test_control_volume_snapshots_taken_apart_do_not_show_one_moment(qemu_cluster, guests):
    """The check above can fail: snapshots of the two disks taken apart (the guest writing three more numbers
    in between, however long that takes on a loaded machine) hold numbers further apart than one."""
    client = qemu_cluster.client
    _writing(qemu_cluster, "steady", beyond=_sequences(qemu_cluster, "steady")[0] or 0)
    client.storage.snapshot_add(POOL, "steady-a", "apart")
    _writing(qemu_cluster, "steady", beyond=read_sequence(_disk_path(qemu_cluster, "steady-a", "apart")) + 3)
    client.storage.snapshot_add(POOL, "steady-b", "apart")
    held = _sequences(qemu_cluster, "steady", "apart")
    client.storage.snapshot_remove(POOL, "steady-a", "apart")
    client.storage.snapshot_remove(POOL, "steady-b", "apart")
    assert not _one_moment(*held), f"snapshots taken apart hold {held}"


def test_a_running_guest_exported_full_then_twice_incrementally_boots_in_another_cluster_at_the_last(
        qemu_cluster, guests, tmp_path_factory):
    """Snapshots of the writing guest streamed out as a full export and two incrementals; the chain imported into
    a second local cluster of QEMU hosts started here: the volumes hold the bytes of the last snapshot and the
    guest, booted there, finds the sequence numbers that snapshot holds."""
    client, vm = qemu_cluster.client, "steady"
    chain = tmp_path_factory.mktemp("chain") / "steady.exports"
    parent = None
    with open(chain, "wb") as output:
        for snapshot in ("x1", "x2", "x3"):
            _writing(qemu_cluster, vm, beyond=(_sequences(qemu_cluster, vm)[0] or 0) + 5)
            client.vms.snapshot_create(vm, snapshot)
            written = client.vms.snapshot_export_to(vm, snapshot, output, incremental_parent=parent)
            assert written["parent"] == parent, written
            parent = snapshot
    held = _sequences(qemu_cluster, vm, "x3")
    at_x3 = [_disk_path(qemu_cluster, f"{vm}-{disk}", "x3").read_bytes() for disk in ("a", "b")]
    for snapshot in ("x1", "x2", "x3"):
        client.vms.snapshot_remove(vm, snapshot)

    for other in started_cluster(tmp_path_factory.mktemp("import-qemu"), nodes=1, coordinators=1, hypervisor="qemu"):
        other.client.storage.pool_add(POOL)
        with open(chain, "rb") as source:
            imported = other.client.vms.snapshot_import_from(source)
        assert imported["name"] == vm and imported["state"] == "stop", imported
        volumes = [disk["source"].split("/", 1)[1] for disk in other.client.vms.info(vm)["disks"]]
        assert [_disk_path(other, volume).read_bytes() for volume in volumes] == at_x3, \
            "the imported volumes hold the bytes at the last snapshot"
        other.client.vms.start(vm, wait=True)

        def found_at_boot():
            found = sequences_found(console_text(other, vm, "hv1"))
            return found if len(found) == 2 else None
        found = eventually(found_at_boot, 90, interval=0.2)
        assert found == {"vda": held[0], "vdb": held[1]}, f"the guest booted finding {found}, x3 held {held}"
        assert eventually(lambda: (lambda first: first and first > held[0])(read_sequence(_disk_path(other, volumes[0]))),
                          60, interval=0.2), "the imported guest writes on from there"


def test_a_pause_past_its_maximum_abandons_the_snapshot_and_the_guest_runs_on(qemu_cluster, guests):
    client = qemu_cluster.client
    before = _writing(qemu_cluster, "bulky")
    refused = pvc(qemu_cluster, "vm", "snapshot", "create", "bulky", "hasty", "--max-pause", "1")
    assert refused.exit_code == 1 and "abandoned" in refused.output, refused.output
    assert len(refused.output.strip().splitlines()) == 1, refused.output
    assert _domain_state(qemu_cluster, "hv2", "bulky") == libvirt.VIR_DOMAIN_RUNNING
    assert client.vms.snapshot_list("bulky") == []
    assert not any(_disk_path(qemu_cluster, f"bulky-{disk}", "hasty").exists() for disk in ("a", "b"))
    assert all(row["name"] != "hasty" for row in client.storage.snapshot_list(POOL))
    _writing(qemu_cluster, "bulky", beyond=before + 10)


def test_pvcnoded_resumes_at_start_a_guest_a_snapshot_left_paused(qemu_cluster, guests):
    """As a daemon killed with the guest paused leaves it: paused in libvirt, noted in the pause directory."""
    pauses = Path(qemu_cluster.local.state_dir) / "nodes" / "hv2" / "snapshot-pauses"
    qemu_cluster.local.stop_daemon("pvcnoded", "hv2", kill=True)
    connection = libvirt.open(qemu_cluster.local.host("hv2").uri)
    try:
        pauses.mkdir(exist_ok=True)
        (pauses / "bulky").write_text("cut-short")
        connection.lookupByName("bulky").suspend()
        assert _domain_state(qemu_cluster, "hv2", "bulky") == libvirt.VIR_DOMAIN_PAUSED
    finally:
        connection.close()
    restart_node_daemon(qemu_cluster, "hv2")
    assert _domain_state(qemu_cluster, "hv2", "bulky") == libvirt.VIR_DOMAIN_RUNNING
    assert not (pauses / "bulky").exists()
    _writing(qemu_cluster, "bulky", beyond=_sequences(qemu_cluster, "bulky")[0] + 10)


def test_a_coordinator_killed_during_a_snapshot_leaves_it_whole_or_absent_and_the_guest_running(qemu_cluster, guests):
    client = qemu_cluster.client
    local = qemu_cluster.local
    _writing(qemu_cluster, "bulky")
    outcome = {}

    def create():
        try:
            outcome["view"] = client.vms.snapshot_create("bulky", "cut")
        except PVCError as error:
            outcome["error"] = error

    worker = threading.Thread(target=create, daemon=True)
    worker.start()
    pending = eventually(lambda: any(row["pending"] == "create" for row in client.vms.snapshot_list("bulky")),
                         30, interval=0.02)
    assert pending, f"the snapshot was never recorded as under way: {outcome}"
    local.stop_daemon("pvcapid", "pvcapid1", kill=True)
    local.start_coordinator("pvcapid1")
    worker.join(120)

    def settled():
        try:
            rows = client.vms.snapshot_list("bulky")
        except Unavailable:
            return None
        return [rows] if not any(row["pending"] for row in rows) else None
    answer = eventually(settled, 60, interval=0.3)
    assert answer, f"the cut-off snapshot is still pending: {client.vms.snapshot_list('bulky')}"
    rows = answer[0]
    files = [_disk_path(qemu_cluster, f"bulky-{disk}", "cut").exists() for disk in ("a", "b")]
    volume_records = [row for row in client.storage.snapshot_list(POOL) if row["name"] == "cut"]
    if rows:
        assert files == [True, True] and len(volume_records) == 2, "a kept snapshot is whole"
        assert _one_moment(*_sequences(qemu_cluster, "bulky", "cut"))
        client.vms.snapshot_remove("bulky", "cut")
    else:
        assert files == [False, False] and volume_records == [], "an undone snapshot leaves nothing"
    assert _domain_state(qemu_cluster, "hv2", "bulky") == libvirt.VIR_DOMAIN_RUNNING, "the guest is not paused"
    _writing(qemu_cluster, "bulky", beyond=_sequences(qemu_cluster, "bulky")[0] + 10)


def test_a_stopped_vm_snapshot_without_a_pause_and_bad_names(qemu_cluster, guests):
    client = qemu_cluster.client
    client.storage.volume_add(POOL, "idle-a", 4 * MiB)
    client.vms.define(domain_xml("idle", disks=[f"{POOL}/idle-a"]), target="hv3")
    try:
        view = client.vms.snapshot_create("idle", "cold")
        assert view["paused_ms"] is None and view["volumes"] == [f"{POOL}/idle-a"]
        again = pvc(qemu_cluster, "vm", "snapshot", "create", "idle", "cold")
        assert again.exit_code == 1 and "has a snapshot named 'cold' already" in again.output, again.output
        bad = pvc(qemu_cluster, "vm", "snapshot", "create", "idle", "../x")
        assert bad.exit_code == 1 and "invalid snapshot name" in bad.output, bad.output
        missing = pvc(qemu_cluster, "vm", "snapshot", "remove", "idle", "nothing", "--yes")
        assert missing.exit_code == 1 and "has no snapshot named 'nothing'" in missing.output, missing.output
        client.vms.snapshot_remove("idle", "cold")
        assert not _disk_path(qemu_cluster, "idle-a", "cold").exists()
    finally:
        client.vms.remove("idle")


def test_a_guest_with_an_agent_is_frozen_not_paused_and_its_filesystem_snapshot_is_clean(qemu_cluster, guests):
    client = qemu_cluster.client
    view = client.vms.snapshot_create("agented", "quiet")
    assert view["consistency"] == "frozen", view
    assert _freeze_lines(qemu_cluster, "agented", "hv3")[-2:] == ["freeze", "thaw"], \
        "the guest's own fsfreeze hook saw the freeze and the thaw"
    assert _domain_state(qemu_cluster, "hv3", "agented") == libvirt.VIR_DOMAIN_RUNNING
    checked = subprocess.run(["e2fsck", "-fn", str(_disk_path(qemu_cluster, "agented-fs", "quiet"))],
                             capture_output=True, text=True)
    assert checked.returncode == 0, f"the frozen filesystem's snapshot is not clean: {checked.stdout}"
    client.vms.snapshot_remove("agented", "quiet")


def test_a_coordinator_killed_while_a_guest_is_frozen_leaves_it_thawed(qemu_cluster, guests):
    client, local = qemu_cluster.client, qemu_cluster.local
    frozen_before = len(_freeze_lines(qemu_cluster, "agented", "hv3"))
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.setdefault("answer", _answer(
        client.vms.snapshot_create, "agented", "cut")), daemon=True)
    worker.start()
    assert eventually(lambda: any(row["pending"] == "create" for row in client.vms.snapshot_list("agented")),
                      30, interval=0.02), f"the snapshot was never recorded as under way: {outcome}"
    local.stop_daemon("pvcapid", "pvcapid1", kill=True)
    local.start_coordinator("pvcapid1")
    worker.join(120)
    assert eventually(lambda: _answered(lambda: not any(row["pending"] for row in
                                                        client.vms.snapshot_list("agented"))), 60, interval=0.3)
    lines = _freeze_lines(qemu_cluster, "agented", "hv3")[frozen_before:]
    assert lines in ([], ["freeze", "thaw"]), f"the guest's filesystems end thawed: {lines}"
    assert _domain_state(qemu_cluster, "hv3", "agented") == libvirt.VIR_DOMAIN_RUNNING
    kept = client.vms.snapshot_list("agented")
    files = [_disk_path(qemu_cluster, f"agented-{disk}", "cut").exists() for disk in ("a", "b", "fs")]
    assert files == [bool(kept)] * 3, "whole or absent"
    if kept:
        client.vms.snapshot_remove("agented", "cut")


def test_pvcnoded_thaws_at_start_a_guest_a_snapshot_left_frozen(qemu_cluster, guests):
    pauses = Path(qemu_cluster.local.state_dir) / "nodes" / "hv3" / "snapshot-pauses"
    qemu_cluster.local.stop_daemon("pvcnoded", "hv3", kill=True)
    connection = libvirt.open(qemu_cluster.local.host("hv3").uri)
    try:
        pauses.mkdir(exist_ok=True)
        (pauses / "agented").write_text("freeze")
        domain = connection.lookupByName("agented")
        domain.agentSetResponseTimeout(30, 0)
        assert domain.fsFreeze() == 1, "the guest's one filesystem is frozen"
    finally:
        connection.close()
    assert _freeze_lines(qemu_cluster, "agented", "hv3")[-1] == "freeze"
    restart_node_daemon(qemu_cluster, "hv3")
    assert eventually(lambda: _freeze_lines(qemu_cluster, "agented", "hv3")[-1] == "thaw", 10)
    assert not (pauses / "agented").exists()


def _answer(call, *args):
    try:
        return call(*args)
    except PVCError as error:
        return error


def _answered(check):
    try:
        return check()
    except Unavailable:
        return None
