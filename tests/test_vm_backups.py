"""Exporting VM snapshots to a backup root (full, then incrementals) and importing a VM from the chain, on each
storage backend; and every kind of bad input refused in one line with nothing left behind."""
import json
import os
import shutil
import subprocess
import threading

from pvc.cli.localcluster.guest import domain_xml

from pvc.errors import PVCError

from helpers import eventually, refused_in_one_line
from storage_support import stored_names, unique, vm_on_known_disk, volume_sha256
from vm_support import fence_deadline_beyond_restarts, pvc, restart_node_daemon

MiB = 1024 * 1024


def _changed(source, target, offset: int):
    """A copy of the raw image `source` with 4 KiB changed at `offset`."""
    data = bytearray(source.read_bytes())
    data[offset:offset + 4096] = bytes(range(256)) * 16
    target.write_bytes(bytes(data))
    return target


def test_export_full_and_two_incrementals_then_import_the_chain(storage_cluster, tmp_path):
    cluster, client = storage_cluster, storage_cluster.client
    root = cluster.local.backup_root
    pool, vm, image = vm_on_known_disk(client, "bk", tmp_path, seed=3)
    exports = root / vm
    exports.mkdir()
    try:
        client.vms.snapshot_create(vm, "s1")
        full = pvc(cluster, "vm", "snapshot", "export", vm, "s1", str(exports / "s1"), "--format", "json")
        assert full.exit_code == 0, full.output
        full_bytes = json.loads(full.output)["bytes"]
        for step, offset in (("s2", 2 * MiB), ("s3", 5 * MiB)):
            client.storage.upload(pool, "disk", str(_changed(image, tmp_path / f"{step}.raw", offset)), force=True)
            image = tmp_path / f"{step}.raw"
            client.vms.snapshot_create(vm, step)
            parent = "s1" if step == "s2" else "s2"
            incremental = client.vms.snapshot_export(vm, step, str(exports / step), incremental_parent=parent)
            if cluster.backend == "file":
                assert incremental["bytes"] < full_bytes / 100, ("4 KiB changed sends about 4 KiB", incremental,
                                                                 full_bytes)
        at_s3 = volume_sha256(cluster, pool, "disk")
        manifest = json.loads((exports / "s3" / "manifest.json").read_text())
        assert manifest["parent"] == "s2" and manifest["parent_export"]["directory"] == "s2"
        assert manifest["spec"]["xml"] == client.vms.dump(vm)

        _bad_destinations(cluster, vm, exports, tmp_path)

        copy = pvc(cluster, "vm", "snapshot", "import", str(exports / "s3"), "--name", f"{vm}-copy")
        assert copy.exit_code == 0, copy.output
        restored = client.vms.info(f"{vm}-copy")
        assert restored["state"] == "stop" and restored["uuid"] != client.vms.info(vm)["uuid"]
        assert [disk["source"] for disk in restored["disks"]] == [f"{pool}/{vm}-copy_disk0"]
        assert volume_sha256(cluster, pool, f"{vm}-copy_disk0") == at_s3, "the bytes at the last snapshot"

        _bad_chains(cluster, client, vm, pool, exports)
    finally:
        for name in (f"{vm}-copy", vm):
            if any(row["name"] == name for row in client.vms.list()):
                client.vms.remove(name)
        client.storage.pool_remove(pool, force=True)
        shutil.rmtree(exports, ignore_errors=True)


def _bad_destinations(cluster, vm, exports, tmp_path) -> None:
    refused_in_one_line(pvc(cluster, "vm", "snapshot", "export", vm, "s3", str(exports / "s3")), "exists already")
    refused_in_one_line(pvc(cluster, "vm", "snapshot", "export", vm, "s3", str(exports / ".." / "escape")), "'..'")
    refused_in_one_line(pvc(cluster, "vm", "snapshot", "export", vm, "s3", str(tmp_path / "elsewhere")), "not under a backup root")
    (exports / "link").symlink_to(tmp_path)
    refused_in_one_line(pvc(cluster, "vm", "snapshot", "export", vm, "s3", str(exports / "link" / "x")), "links are not followed")
    assert not (tmp_path / "x").exists()
    (exports / "other").mkdir()
    refused_in_one_line(pvc(cluster, "vm", "snapshot", "export", vm, "s3", str(exports / "other" / "orphan"),
                 "--incremental-parent", "s1"), "no export of snapshot 's1'")
    assert list((exports / "other").iterdir()) == []
    (exports / "other").rmdir()
    (exports / "link").unlink()
    assert sorted(path.name for path in exports.iterdir()) == ["s1", "s2", "s3"], "nothing half-written is left"


def _bad_chains(cluster, client, vm, pool, exports) -> None:
    before = stored_names(cluster, pool)
    refused_in_one_line(pvc(cluster, "vm", "snapshot", "import", str(exports / "s3")), f"a VM named '{vm}' exists already")

    corrupt = exports / "corrupt"
    corrupt.mkdir()
    for step in ("s1", "s2", "s3"):
        shutil.copytree(exports / step, corrupt / step)
    stream = next((corrupt / "s2").glob("*.diff"))
    data = bytearray(stream.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stream.write_bytes(bytes(data))
    refused_in_one_line(pvc(cluster, "vm", "snapshot", "import", str(corrupt / "s3"), "--name", f"{vm}-bad"), "")
    stream.write_bytes(bytes(data[:len(data) // 3]))
    refused_in_one_line(pvc(cluster, "vm", "snapshot", "import", str(corrupt / "s3"), "--name", f"{vm}-bad"), "")

    manifest = corrupt / "s1" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"s1"', '"s1" '))
    refused_in_one_line(pvc(cluster, "vm", "snapshot", "import", str(corrupt / "s3"), "--name", f"{vm}-bad"), "manifest changed")
    shutil.rmtree(corrupt / "s1")
    refused_in_one_line(pvc(cluster, "vm", "snapshot", "import", str(corrupt / "s3"), "--name", f"{vm}-bad"), "does not exist")
    (corrupt / "s3" / "manifest.json").write_text("{not json")
    refused_in_one_line(pvc(cluster, "vm", "snapshot", "import", str(corrupt / "s3"), "--name", f"{vm}-bad"), "not valid JSON")

    assert stored_names(cluster, pool) == before, "no volume is left by a refused import"
    assert all(row["name"] != f"{vm}-bad" for row in client.vms.list())
    assert all(volume["pending"] is None for volume in client.storage.volume_list(pool))


def test_a_destination_read_only_or_too_small_is_refused_with_nothing_left(storage_cluster, tmp_path):
    """A backup store mounted read-only, one too small for a whole export (refused before writing), and one that
    fills during an incremental (file storage cannot tell that size first; Ceph can, and refuses it first)."""
    cluster, client = storage_cluster, storage_cluster.client
    pool, vm, image = vm_on_known_disk(client, "bkroom", tmp_path, seed=5)
    stores = {name: cluster.local.backup_root / f"{vm}-{name}" for name in ("ro", "small", "nearly-full")}
    try:
        for name, store in stores.items():
            store.mkdir()
            size = {"ro": "1m", "small": "2m", "nearly-full": "16m"}[name]
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(store)], check=True)
        subprocess.run(["mount", "-o", "remount,ro", str(stores["ro"])], check=True)
        client.vms.snapshot_create(vm, "s1")
        before = stored_names(cluster, pool)

        refused_in_one_line(pvc(cluster, "vm", "snapshot", "export", vm, "s1", str(stores["ro"] / "s1")),
                            "is not writable: Read-only file system")
        refused_in_one_line(pvc(cluster, "vm", "snapshot", "export", vm, "s1", str(stores["small"] / "s1")),
                            "is too small: the export needs up to")
        assert list(stores["small"].iterdir()) == [] and stored_names(cluster, pool) == before

        client.vms.snapshot_export(vm, "s1", str(stores["nearly-full"] / "s1"))
        client.storage.upload(pool, "disk", str(_changed(image, tmp_path / "s2.raw", 3 * MiB)), force=True)
        client.vms.snapshot_create(vm, "s2")
        _fill_but(stores["nearly-full"], 2048)
        refused_in_one_line(pvc(cluster, "vm", "snapshot", "export", vm, "s2", str(stores["nearly-full"] / "s2"),
                                "--incremental-parent", "s1"),
                            "is too small: its filesystem filled while" if cluster.backend == "file"
                            else "is too small: the export needs up to")
        assert sorted(path.name for path in stores["nearly-full"].iterdir()) == ["filler", "s1"]
    finally:
        for store in stores.values():
            subprocess.run(["umount", str(store)], check=False)
            shutil.rmtree(store, ignore_errors=True)
        client.vms.remove(vm)
        client.storage.pool_remove(pool, force=True)


def _fill_but(store, left: int) -> None:
    """Fill the filesystem of `store` with a file, leaving `left` bytes free."""
    free = shutil.disk_usage(store).free
    with open(store / "filler", "wb") as filler:
        filler.write(bytes(free - left))
    assert shutil.disk_usage(store).free <= left


def test_a_node_killed_during_an_export_leaves_no_partial_export(storage_cluster, tmp_path):
    cluster, client = storage_cluster, storage_cluster.client
    fence_deadline_beyond_restarts(cluster)
    root = cluster.local.backup_root
    pool, vm = unique("bkkill"), unique("bkkillvm")
    client.storage.pool_add(pool)
    image = tmp_path / "big.raw"
    with open(image, "wb") as data:
        for _ in range(256):
            data.write(os.urandom(MiB))
    client.storage.upload(pool, "disk", str(image))
    client.vms.define(domain_xml(vm, disk=f"{pool}/disk", domain_type="kvm"), target="hv1")
    exports = root / vm
    exports.mkdir()
    outcome = {}
    try:
        client.vms.snapshot_create(vm, "s1")
        worker = threading.Thread(target=lambda: outcome.setdefault("answer", _answer(
            client.vms.snapshot_export, vm, "s1", str(exports / "s1"))), daemon=True)
        worker.start()
        assert eventually(lambda: list(exports.glob(".s1.partial-*")), 60, interval=0.02), \
            f"the export never began: {outcome}"
        cluster.local.stop_daemon("pvcnoded", "hv1", kill=True)
        worker.join(120)
        assert not (exports / "s1").exists(), "the destination only ever holds a whole export"
        restart_node_daemon(cluster, "hv1")
        assert list(exports.iterdir()) == [], "the restarted node removed the partial export"
        again = client.vms.snapshot_export(vm, "s1", str(exports / "s1"))
        assert (exports / "s1" / "manifest.json").is_file() and again["bytes"] > 0
    finally:
        client.vms.remove(vm)
        client.storage.pool_remove(pool, force=True)
        shutil.rmtree(exports, ignore_errors=True)


def _answer(call, *args):
    try:
        return call(*args)
    except PVCError as error:
        return error
