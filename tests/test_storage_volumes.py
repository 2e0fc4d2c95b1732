"""Pools, volumes and snapshots through the CLI and the API, checked against the storage itself; every bad input
is one line naming what is wrong, and changes nothing. Each test runs on the file backend and on Ceph."""
from __future__ import annotations

import json

import pytest

from pvc.errors import AlreadyExists, Conflict, InvalidInput, NotFound

from storage_support import MIB, make_image, pvc, stored_names, unique, volume_by_hand, volume_bytes, volume_sha256


@pytest.fixture(scope="module")
def pool(storage_cluster):
    name = unique("vol")
    storage_cluster.client.storage.pool_add(name)
    yield name
    storage_cluster.client.storage.pool_remove(name, True)


def cli_json(cluster, *args):
    result = pvc(cluster, *args, "--format", "json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def cli_error(cluster, *args) -> str:
    result = pvc(cluster, *args)
    assert result.exit_code == 1, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def test_pool_lifecycle_and_status(storage_cluster):
    name = unique("pool")
    added = cli_json(storage_cluster, "storage", "pool", "add", name)
    assert added["name"] == name and added["backend"] == storage_cluster.backend and added["volumes"] == 0
    if storage_cluster.backend == "ceph":
        assert added["options"] == {"pg_num": 8}

    assert name in [pool["name"] for pool in cli_json(storage_cluster, "storage", "pool", "list")]
    status = {row["name"]: row for row in cli_json(storage_cluster, "storage", "status")}[name]
    assert status["free_bytes"] > 0 and status["capacity_bytes"] >= status["free_bytes"]
    table = pvc(storage_cluster, "storage", "status").stdout
    assert "CAPACITY" in table and name in table

    assert "exists already" in cli_error(storage_cluster, "storage", "pool", "add", name)
    result = pvc(storage_cluster, "storage", "pool", "remove", name, "--yes")
    assert result.exit_code == 0 and f"Removed storage pool {name}" in result.stdout
    assert name not in [pool["name"] for pool in cli_json(storage_cluster, "storage", "pool", "list")]


def test_volume_add_resize_rename_info_list_remove(storage_cluster, pool):
    volume = cli_json(storage_cluster, "storage", "volume", "add", pool, "disk", "10M")
    assert volume == {"name": "disk", "pool": pool, "size_bytes": 10 * MIB, "snapshots": [], "used_by": [],
                      "pending": None}
    assert volume_bytes(storage_cluster, pool, "disk") == bytes(10 * MIB)
    assert "10M" in pvc(storage_cluster, "storage", "volume", "list", pool).stdout

    assert cli_json(storage_cluster, "storage", "volume", "resize", pool, "disk", "1G", "-y")["size_bytes"] == 1 << 30
    assert "would shrink" in cli_error(storage_cluster, "storage", "volume", "resize", pool, "disk", "512M", "-y")
    shrunk = cli_json(storage_cluster, "storage", "volume", "resize", pool, "disk", "512M", "--allow-shrink",
                      "-y")
    assert shrunk["size_bytes"] == 512 * MIB

    renamed = cli_json(storage_cluster, "storage", "volume", "rename", pool, "disk", "root", "-y")
    assert renamed["name"] == "root"
    assert "disk" not in stored_names(storage_cluster, pool) and "root" in stored_names(storage_cluster, pool)
    assert cli_json(storage_cluster, "storage", "volume", "info", pool, "root")["size_bytes"] == 512 * MIB

    result = pvc(storage_cluster, "storage", "volume", "remove", pool, "root", "-y")
    assert result.exit_code == 0
    assert "root" not in stored_names(storage_cluster, pool)
    assert "no volume 'root'" in cli_error(storage_cluster, "storage", "volume", "info", pool, "root")


def test_snapshots_clone_and_rollback(storage_cluster, pool, tmp_path):
    storage = storage_cluster.client.storage
    storage.upload(pool, "base", str(make_image(tmp_path, "raw", seed=61)))
    original = volume_sha256(storage_cluster, pool, "base")
    snapshot = cli_json(storage_cluster, "storage", "volume", "snapshot", "add", pool, "base", "golden")
    assert snapshot["name"] == "golden"

    storage.upload(pool, "base", str(make_image(tmp_path, "qcow2", seed=62)))
    changed = volume_sha256(storage_cluster, pool, "base")
    assert changed != original

    from_snapshot = cli_json(storage_cluster, "storage", "volume", "clone", pool, "base", "copy-golden",
                             "--snapshot", "golden")
    assert from_snapshot["name"] == "copy-golden"
    assert volume_sha256(storage_cluster, pool, "copy-golden") == original
    storage.volume_clone(pool, "base", "copy-now")
    assert volume_sha256(storage_cluster, pool, "copy-now") == changed

    listed = cli_json(storage_cluster, "storage", "volume", "snapshot", "list", pool, "base")
    assert [entry["name"] for entry in listed] == ["golden"]
    rolled = cli_json(storage_cluster, "storage", "volume", "snapshot", "rollback", pool, "base", "golden", "-y")
    assert rolled["snapshots"] == ["golden"]
    assert volume_sha256(storage_cluster, pool, "base") == original

    assert pvc(storage_cluster, "storage", "volume", "snapshot", "remove", pool, "base", "golden",
               "-y").exit_code == 0
    assert storage.snapshot_list(pool, "base") == []
    assert "no snapshot named 'golden'" in cli_error(storage_cluster, "storage", "volume", "clone", pool, "base",
                                                     "ghost", "--snapshot", "golden")
    assert "ghost" not in stored_names(storage_cluster, pool)


def test_volume_in_use_by_a_vm_is_protected(storage_cluster, pool):
    storage = storage_cluster.client.storage
    storage.volume_add(pool, "vmdisk", "4M")
    storage.snapshot_add(pool, "vmdisk", "s1")
    xml = (f"<domain type='test'><name>user-vm</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>"
           f"<os><type>hvm</type></os><devices><disk type='volume' device='disk'>"
           f"<source pool='{pool}' volume='vmdisk'/><target dev='vda'/></disk></devices></domain>")
    storage_cluster.client.vms.define(xml)
    try:
        assert storage.volume_info(pool, "vmdisk")["used_by"] == ["user-vm"]
        assert "used by VM(s) user-vm" in cli_error(storage_cluster, "storage", "volume", "remove", pool, "vmdisk",
                                                    "-y")
        with pytest.raises(Conflict, match="refusing to roll back"):
            storage.snapshot_rollback(pool, "vmdisk", "s1")
        with pytest.raises(Conflict, match="refusing to rename"):
            storage.volume_rename(pool, "vmdisk", "other")
        assert "vmdisk" in stored_names(storage_cluster, pool)

        storage.volume_remove(pool, "vmdisk", True)
        assert "vmdisk" not in stored_names(storage_cluster, pool)
    finally:
        storage_cluster.client.vms.remove("user-vm")


def test_pool_holding_volumes_is_removed_only_when_forced(storage_cluster):
    storage = storage_cluster.client.storage
    name = unique("full")
    storage.pool_add(name)
    storage.volume_add(name, "a", "1M")
    storage.snapshot_add(name, "a", "s")

    assert "holds 1 volume(s) (a)" in cli_error(storage_cluster, "storage", "pool", "remove", name, "-y")
    assert storage.volume_info(name, "a")["snapshots"] == ["s"]

    assert pvc(storage_cluster, "storage", "pool", "remove", name, "--force", "-y").exit_code == 0
    assert storage.volume_list() == [volume for volume in storage.volume_list() if volume["pool"] != name]
    with pytest.raises(NotFound):
        storage.volume_list(name)


BAD_NAMES = ["a/b", "..", "../etc", ".hidden", "with space", "tab\tname", "bell\x07", "", "x" * 64]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_bad_names_are_refused_and_change_nothing(storage_cluster, pool, bad):
    storage = storage_cluster.client.storage
    before = stored_names(storage_cluster, pool)
    with pytest.raises(InvalidInput, match="invalid pool name"):
        storage.pool_add(bad)
    with pytest.raises(InvalidInput, match="invalid volume name"):
        storage.volume_add(pool, bad, "1M")
    storage.volume_add(pool, "named", "1M")
    try:
        with pytest.raises(InvalidInput, match="invalid volume name"):
            storage.volume_rename(pool, "named", bad)
        with pytest.raises(InvalidInput, match="invalid volume name"):
            storage.volume_clone(pool, "named", bad)
        with pytest.raises(InvalidInput, match="invalid snapshot name"):
            storage.snapshot_add(pool, "named", bad)
    finally:
        storage.volume_remove(pool, "named")
    assert stored_names(storage_cluster, pool) == before
    assert bad not in [entry["name"] for entry in storage.pool_list()]


@pytest.mark.parametrize("size", ["-1G", "0", "1.5G", "10X", "G", "", "ten", "2000000P"])
def test_bad_sizes_are_refused(storage_cluster, pool, size):
    message = cli_error(storage_cluster, "storage", "volume", "add", "--", pool, "sized", size)
    assert "invalid size" in message
    assert "sized" not in stored_names(storage_cluster, pool)


def test_a_size_the_file_system_cannot_hold_leaves_no_volume_behind(storage_cluster, pool):
    if storage_cluster.backend != "file":
        pytest.skip("a file system's file size limit; RBD images are thin and Ceph refuses only at write time")
    message = cli_error(storage_cluster, "storage", "volume", "add", pool, "huge", "64P")
    assert "huge" in message
    assert "huge" not in stored_names(storage_cluster, pool)
    storage_cluster.client.storage.volume_add(pool, "huge", "1M")
    storage_cluster.client.storage.volume_remove(pool, "huge")


def test_unknown_pools_volumes_and_duplicates(storage_cluster, pool):
    storage = storage_cluster.client.storage
    assert "no storage pool named 'nowhere'" in cli_error(storage_cluster, "storage", "volume", "add", "nowhere",
                                                          "v", "1M")
    assert "no storage pool named 'nowhere'" in cli_error(storage_cluster, "storage", "volume", "list", "nowhere")
    for args in (("volume", "resize", pool, "absent", "2M", "-y"), ("volume", "remove", pool, "absent", "-y"),
                 ("volume", "rename", pool, "absent", "b", "-y"), ("volume", "clone", pool, "absent", "b"),
                 ("volume", "snapshot", "add", pool, "absent", "s")):
        assert f"no volume 'absent' in storage pool '{pool}'" in cli_error(storage_cluster, "storage", *args)
    storage.volume_add(pool, "dup", "1M")
    with pytest.raises(AlreadyExists):
        storage.volume_add(pool, "dup", "2M")
    with pytest.raises(AlreadyExists):
        storage.volume_clone(pool, "dup", "dup")
    assert storage.volume_info(pool, "dup")["size_bytes"] == MIB
    storage.volume_remove(pool, "dup")


def test_a_name_only_the_storage_holds_is_refused_and_its_image_kept(storage_cluster, pool, tmp_path):
    """An image PVC has no record of (made by hand, or left by a crash): a volume add or clone of that name is
    refused, and the image is left as it was, not removed as the undo of the storage's own refusal."""
    storage = storage_cluster.client.storage
    data = bytes(range(256)) * 4096
    storage.volume_add(pool, "source", "1M")
    with volume_by_hand(storage_cluster, pool, "handmade", data, tmp_path / "scratch"):
        with pytest.raises(AlreadyExists, match="exists already in the storage"):
            storage.volume_add(pool, "handmade", "1M")
        with pytest.raises(AlreadyExists, match="exists already in the storage"):
            storage.volume_clone(pool, "source", "handmade")
        assert volume_bytes(storage_cluster, pool, "handmade") == data
        assert "handmade" not in [volume["name"] for volume in storage.volume_list(pool)]
    storage.volume_remove(pool, "source")
