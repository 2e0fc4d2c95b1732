"""Scheduled backups on a one-node local cluster (file backend, test-driver host): runs back up the tagged VMs,
full then incremental; retention removes whole chains; a leader killed mid-run is resumed with nothing backed
up twice or left half-made; a bad setting and a failing pre command are refused or fail in one line. The first two
of those also run on Ceph, where snapshots and exports are the storage's own."""
import json
import time

import pytest

from pvc import schema
from pvc.cli.localcluster.guest import domain_xml

from conftest import started_cluster
from helpers import cluster_store, eventually, refused_in_one_line
from storage_support import known_raw
from vm_support import fence_deadline_beyond_restarts, pvc, restart_node_daemon, wait_for_task

POOL = "abpool"
TAG = "nightly"


@pytest.fixture(scope="module")
def backup_cluster(tmp_path_factory):
    """One node, one coordinator, the file backend; two tagged VMs (one running) and one untagged."""
    yield from _backup_cluster(tmp_path_factory, "file")


@pytest.fixture(scope="module")
def ceph_backup_cluster(tmp_path_factory, private_ceph):
    """The same on Ceph, for the tests whose outcome rests on the storage's snapshots and exports."""
    yield from _backup_cluster(tmp_path_factory, "ceph", private_ceph.conf)


def _backup_cluster(tmp_path_factory, backend: str, ceph_conf: str | None = None):
    for running in started_cluster(tmp_path_factory.mktemp(f"autobackup-{backend}"), nodes=1, coordinators=1,
                                   storage=backend, ceph_conf=ceph_conf):
        client = running.client
        client.storage.pool_add(POOL)
        image = known_raw(tmp_path_factory.mktemp("images") / "disk.raw", size=1 << 20, seed=11)
        for vm, tags in (("alpha", [TAG]), ("beta", [TAG]), ("gamma", [])):
            client.storage.upload(POOL, f"{vm}-disk", str(image))
            client.vms.define(domain_xml(vm, disk=f"{POOL}/{vm}-disk", domain_type="kvm"), target="hv1", tags=tags)
        client.vms.start("alpha", wait=True)
        (running.local.backup_root / "auto").mkdir()
        yield running


def _destination(cluster):
    return cluster.local.backup_root / "auto"


def _manifest(cluster, vm: str, snapshot: str) -> dict:
    return json.loads((_destination(cluster) / vm / snapshot / "manifest.json").read_text())


def _exports(cluster, vm: str) -> list[str]:
    directory = _destination(cluster) / vm
    return sorted(path.name for path in directory.iterdir()) if directory.exists() else []


def _autobackup_snapshots(client, vm: str) -> list[str]:
    return [row["name"] for row in client.vms.snapshot_list(vm) if row["name"].startswith("autobackup-")]


def _run(client, *vms: str) -> dict:
    return wait_for_task(client, client.vms.autobackup_run(list(vms) or None), timeout=60)


def test_a_bad_setting_or_a_run_without_a_destination_is_refused_in_one_line(backup_cluster):
    cluster, client = backup_cluster, backup_cluster.client
    before = client.cluster.config()
    refused_in_one_line(pvc(cluster, "cluster", "config", "--autobackup-schedule", "25:00"), "autobackup_schedule must be")
    refused_in_one_line(pvc(cluster, "cluster", "config", "--autobackup-keep-chains", "0"), "autobackup_keep_chains must be")
    refused_in_one_line(pvc(cluster, "cluster", "config", "--autobackup-destination", "../x"), "autobackup_destination must")
    assert client.cluster.config() == before, "a refused setting changes nothing"
    refused_in_one_line(pvc(cluster, "vm", "autobackup", "run"), "autobackup_destination is not set")
    assert not [task for task in client.nodes.tasks() if task["kind"] == "autobackup"], "nothing recorded"


def test_runs_back_up_the_tagged_vms_full_then_incremental_and_retention_removes_whole_chains(backup_cluster):
    _backs_up_full_then_incremental_and_keeps_whole_chains(backup_cluster)


def _backs_up_full_then_incremental_and_keeps_whole_chains(cluster) -> None:
    client = cluster.client
    shown = pvc(cluster, "cluster", "config", "--autobackup-tag", TAG, "--autobackup-destination",
                str(_destination(cluster)), "--autobackup-full-interval", "2", "--autobackup-keep-chains", "1")
    assert shown.exit_code == 0, shown.output

    ran = pvc(cluster, "vm", "autobackup", "run", "--wait")
    assert ran.exit_code == 0 and "alpha: done (full to " in ran.output, ran.output
    first = client.nodes.task(ran.output.split()[2].rstrip(":"))
    assert first["state"] == "done" and first["backed_up"] == ["alpha", "beta"], first
    assert _exports(cluster, "gamma") == [], "an untagged VM is not backed up"
    full = first["snapshot"]
    assert _exports(cluster, "alpha") == [full] and _manifest(cluster, "alpha", full)["parent"] is None

    second = _run(client)
    incremental = second["snapshot"]
    assert second["steps"]["alpha"]["kind"] == "incremental"
    assert _manifest(cluster, "alpha", incremental)["parent"] == full
    assert _exports(cluster, "alpha") == sorted([full, incremental])
    assert _autobackup_snapshots(client, "alpha") == [incremental], "only the next incremental's parent is kept"
    ran = pvc(cluster, "vm", "autobackup", "run", "--force-full", "beta", "--wait")
    assert ran.exit_code == 0 and "beta: done (full to " in ran.output, ran.output
    forced = client.nodes.task(ran.output.split()[2].rstrip(":"))["snapshot"]
    assert _exports(cluster, "beta") == [forced], "a forced full export began a chain; the one before went whole"
    restored = client.vms.snapshot_import(str(_destination(cluster) / "alpha" / incremental), name="alpha-back")
    assert restored["state"] == "stop", "the chain restores from its last export"
    client.vms.remove("alpha-back")
    client.storage.volume_remove(POOL, "alpha-back_disk0")

    third = _run(client)
    assert third["steps"]["alpha"]["kind"] == "full", "a full export every second backup"
    assert _exports(cluster, "alpha") == [third["snapshot"]], "the old chain went whole, the new one stays"
    assert third["steps"]["beta"]["kind"] == "incremental"
    assert _exports(cluster, "beta") == sorted([forced, third["snapshot"]])
    assert [row["chain"] for row in client.vms.autobackup_status()["chains"] if row["name"] == "alpha"] == \
        [third["snapshot"]]
    listed = pvc(cluster, "cluster", "task", "list")
    assert third["id"] in listed.output and "2 backed up" in listed.output, listed.output
    status = pvc(cluster, "vm", "autobackup", "status")
    assert status.exit_code == 0 and f"{third['id']}: done" in status.output, status.output


def test_a_leader_killed_while_a_snapshot_is_begun_is_resumed_by_beginning_that_vm_again(backup_cluster):
    """The test holds gamma's lock, so the step stays ``begun`` (its snapshot waits for the lock) when the
    leader is killed; gamma is untagged, so naming it backs it up all the same."""
    cluster, client, local = backup_cluster, backup_cluster.client, backup_cluster.local
    with cluster_store(local) as store:
        lock = store.lock(schema.vm_lock("gamma"), "test")
        assert lock.acquire(timeout=10)
        try:
            task = client.vms.autobackup_run(["gamma"])
            assert eventually(lambda: client.nodes.task(task["id"])["steps"]["gamma"]["state"] == "begun",
                              30, interval=0.05), client.nodes.task(task["id"])
            local.stop_daemon("pvcapid", "pvcapid1", kill=True)
        finally:
            lock.release()
    local.start_coordinator("pvcapid1")
    finished = eventually(lambda: _finished(client, task["id"]), 90, interval=0.3)
    assert finished and finished["state"] == "done", finished
    _backed_up_once(cluster, "gamma", task["snapshot"])


def test_a_leader_and_the_exporting_node_killed_mid_export_leave_nothing_and_the_next_leader_backs_up_once(
        backup_cluster):
    _both_killed_mid_export_and_backed_up_once(backup_cluster)


def _both_killed_mid_export_and_backed_up_once(cluster) -> None:
    """Both die while the node runs its pre command, before any byte is written: the restarted node is not
    writing, so the next leader removes the step's snapshot and backs the VM up again, once."""
    client, local = cluster.client, cluster.local
    fence_deadline_beyond_restarts(cluster)
    _restart_node(cluster, {"autobackup_pre_command": "sleep 3"})
    try:
        task = client.vms.autobackup_run(["beta"])
        assert eventually(lambda: client.nodes.task(task["id"])["steps"]["beta"]["state"] == "exporting",
                          30, interval=0.05), client.nodes.task(task["id"])
        local.stop_daemon("pvcapid", "pvcapid1", kill=True)
        local.stop_daemon("pvcnoded", "hv1", kill=True)
        local.start_node_daemon("hv1")
        local.start_coordinator("pvcapid1")
        finished = eventually(lambda: _finished(client, task["id"]), 90, interval=0.3)
        assert finished and finished["state"] == "done", finished
        assert finished["steps"]["beta"]["attempts"] == 2, "begun again after the undo"
        _backed_up_once(cluster, "beta", task["snapshot"])
    finally:
        local.wait_ready(30)


def test_a_leader_killed_mid_run_is_resumed_with_nothing_backed_up_twice_or_left_half_made(backup_cluster):
    """The node's pre command sleeps, so the leader is killed while the node writes alpha's export."""
    cluster, client, local = backup_cluster, backup_cluster.client, backup_cluster.local
    _restart_node(cluster, {"autobackup_pre_command": "sleep 1"})
    task = client.vms.autobackup_run()
    refused_in_one_line(pvc(cluster, "vm", "autobackup", "run", "beta"), f"an autobackup run is in progress (task {task['id']})")
    exporting = eventually(lambda: client.nodes.task(task["id"])["steps"]["alpha"]["state"] == "exporting",
                           30, interval=0.05)
    assert exporting, client.nodes.task(task["id"])
    local.stop_daemon("pvcapid", "pvcapid1", kill=True)
    local.start_coordinator("pvcapid1")
    finished = eventually(lambda: _finished(client, task["id"]), 90, interval=0.3)
    assert finished and finished["state"] == "done", finished
    for vm in ("alpha", "beta"):
        _backed_up_once(cluster, vm, task["snapshot"])
    assert _run(client)["state"] == "done", "the next run starts: the resumed one let go of the run"


def test_a_failing_pre_command_fails_the_run_and_raises_a_fault(backup_cluster, tmp_path):
    """The post command runs all the same (to unmount what the pre command may have mounted)."""
    cluster, client = backup_cluster, backup_cluster.client
    post_ran = tmp_path / "post-ran"
    _restart_node(cluster, {"autobackup_pre_command": "echo the store is not mounted >&2; exit 3",
                            "autobackup_post_command": f"echo unmounted >> {post_ran}"})
    try:
        before = {vm: _exports(cluster, vm) for vm in ("alpha", "beta")}
        snapshots = _autobackup_snapshots(client, "alpha")
        failed = _run(client, "alpha")
        assert failed["state"] == "failed", failed
        assert failed["errors"] == ["alpha: autobackup_pre_command exited with status 3: the store is not mounted"]
        assert _exports(cluster, "alpha") == before["alpha"] and _autobackup_snapshots(client, "alpha") == snapshots
        assert post_ran.read_text() == "unmounted\n"
        fault = eventually(lambda: next((each for each in client.cluster.faults()
                                         if each["id"] == "cluster.autobackup"), None), 20, interval=0.3)
        assert fault and "autobackup_pre_command exited with status 3" in fault["message"], client.cluster.faults()
    finally:
        _restart_node(cluster, {})
    assert _run(client, "alpha")["state"] == "done"
    assert eventually(lambda: not any(each["id"] == "cluster.autobackup" for each in client.cluster.faults()),
                      20, interval=0.3), "a successful run clears the fault"


def test_the_schedule_starts_a_run_when_due_and_records_when(backup_cluster):
    cluster, client = backup_cluster, backup_cluster.client
    assert client.cluster.config(autobackup_schedule="1h")["autobackup_schedule"] == "1h"
    try:
        with cluster_store(cluster.local) as store:
            assert eventually(lambda: store.read(schema.AUTOBACKUP_SCHEDULE), 10), "the schedule counts from now"
            store.zk.set(schema.AUTOBACKUP_SCHEDULE, schema.encode({"last_run": time.time() - 2 * 3600}))
            task = eventually(lambda: next((each for each in client.nodes.tasks()
                                            if each["kind"] == "autobackup" and each["reason"] == "schedule"), None),
                              20, interval=0.2)
            assert task, client.nodes.tasks()
            assert wait_for_task(client, task)["state"] == "done"
            assert time.time() - store.read(schema.AUTOBACKUP_SCHEDULE)["last_run"] < 60

            destination = client.cluster.config()["autobackup_destination"]
            client.cluster.config(autobackup_destination="off")
            store.zk.set(schema.AUTOBACKUP_SCHEDULE, schema.encode({"last_run": time.time() - 2 * 3600}))
            fault = eventually(lambda: next((each for each in client.cluster.faults()
                                             if each["id"] == "cluster.autobackup"), None), 20, interval=0.3)
            assert fault and "not started: autobackup_destination is not set" in fault["message"], fault
            client.cluster.config(autobackup_destination=destination)
    finally:
        client.cluster.config(autobackup_schedule="off")


def _backed_up_once(cluster, vm: str, snapshot: str) -> None:
    """The run's backup of `vm` is recorded once, every export on disk is a recorded one (none half-made or
    forgotten), and the VM keeps only that run's snapshot."""
    with cluster_store(cluster.local) as store:
        record = store.read(schema.autobackup_vm(vm))
    recorded = [backup["directory"].rsplit("/", 1)[1] for chain in record["chains"] for backup in chain["backups"]]
    assert recorded.count(snapshot) == 1, record
    assert _exports(cluster, vm) == sorted(recorded), "no export outside the VM's chains, and no partial one"
    assert _autobackup_snapshots(cluster.client, vm) == [snapshot], "no snapshot left behind"


def _finished(client, task_id: str) -> dict | None:
    try:
        task = client.nodes.task(task_id)
    except Exception:
        return None
    return task if task["state"] in ("done", "failed") else None


def _restart_node(cluster, settings: dict) -> None:
    cluster.local.stop_daemon("pvcnoded", "hv1")
    restart_node_daemon(cluster, "hv1", extra_settings=settings)


def test_on_ceph_runs_back_up_full_then_incremental_and_retention_removes_whole_chains(ceph_backup_cluster):
    _backs_up_full_then_incremental_and_keeps_whole_chains(ceph_backup_cluster)


def test_on_ceph_a_leader_and_the_exporting_node_killed_mid_export_leave_nothing_behind(ceph_backup_cluster):
    _both_killed_mid_export_and_backed_up_once(ceph_backup_cluster)
