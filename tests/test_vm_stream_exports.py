"""Exports streamed to the client (`pvc vm snapshot export VM SNAPSHOT -`, `vms.snapshot_export_to`): full and
incremental, on a test-driver cluster with each storage backend; the stream is the mirror's, behind its manifest,
and a download ticket is spent by one use whatever the client announces."""
import hashlib
import io
import json
from pathlib import Path

import pytest

from pvc import bulk
from pvc.block_diff import read as read_diff
from pvc.cli.localcluster.guest import domain_xml
from pvc.errors import AuthenticationError, InvalidInput, NotFound

from helpers import refused_in_one_line
from storage_support import (known_raw, staging_files, stored_names, unique, vm_on_known_disk, volume_by_hand,
                             volume_bytes, write_in_place)
from vm_support import pvc

MiB = 1024 * 1024
pytestmark = pytest.mark.parametrize("storage_cluster", ["file", "ceph"], indirect=True)


def _read_stream(raw: bytes) -> tuple[dict, bytes]:
    """A streamed export's head line and data, checked as an importer would check them."""
    line, _, data = raw.partition(b"\n")
    head = json.loads(line)
    assert head["format"] == "pvc-vm-stream/1"
    assert len(data) == head["size_bytes"] and bulk.checksum_of_bytes(data) == head["checksum"]
    return head, data


def _applied(image: bytearray, head: dict, data: bytes) -> bytearray:
    """`image` with every volume stream of the export applied (one volume here), each checked against the
    manifest's byte count and SHA-256."""
    offset = 0
    for volume in head["manifest"]["volumes"]:
        stream = data[offset:offset + volume["bytes"]]
        assert hashlib.sha256(stream).hexdigest() == volume["sha256"]
        offset += volume["bytes"]
        header, extents = read_diff(io.BytesIO(stream), volume["volume"])
        image.extend(bytes(max(0, header.size_bytes - len(image))))
        for kind, start, length, written in extents:
            image[start:start + length] = written if kind == "w" else bytes(length)
    assert offset == len(data)
    return image


def test_export_streamed_full_then_incremental(storage_cluster, tmp_path):
    cluster, client = storage_cluster, storage_cluster.client
    pool, vm, image = vm_on_known_disk(client, "st", tmp_path, seed=5)
    try:
        client.vms.snapshot_create(vm, "s1")
        at_s1 = volume_bytes(cluster, pool, "disk")
        full = pvc(cluster, "vm", "snapshot", "export", vm, "s1", "-")
        assert full.exit_code == 0, full.stderr
        assert f"Exported {vm}@s1" in full.stderr and "full" in full.stderr
        head, data = _read_stream(full.stdout_bytes)
        assert head["manifest"]["vm"] == vm and head["manifest"]["parent"] is None
        assert head["manifest"]["spec"]["xml"] == client.vms.dump(vm)
        assert bytes(_applied(bytearray(), head, data)) == at_s1, "the full stream holds the bytes at s1"

        changed = bytearray(at_s1)
        changed[3 * MiB:3 * MiB + 4096] = bytes(range(256)) * 16
        write_in_place(cluster, pool, "disk", 3 * MiB, bytes(range(256)) * 16, tmp_path / "write")
        client.vms.snapshot_create(vm, "s2")
        with open(tmp_path / "s2.stream", "wb") as output:
            written = client.vms.snapshot_export_to(vm, "s2", output, incremental_parent="s1")
        raw = (tmp_path / "s2.stream").read_bytes()
        assert written["bytes"] == len(raw) and written["parent"] == "s1"
        incremental, delta = _read_stream(raw)
        assert incremental["manifest"]["parent_created"] == head["manifest"]["created"]
        assert len(delta) < len(data) / 4, "an incremental stream carries the changes only"
        rebuilt = _applied(_applied(bytearray(), head, data), incremental, delta)
        assert bytes(rebuilt) == volume_bytes(cluster, pool, "disk") == bytes(changed)
        assert staging_files(cluster) == [], "a fetched stage is gone"

        _tickets_spent_once(cluster, client, vm)
    finally:
        client.vms.remove(vm)
        client.storage.pool_remove(pool, force=True)


def _tickets_spent_once(cluster, client, vm) -> None:
    """A download announcing another checksum is refused, and its ticket (and stage) gone with that one try."""
    ticket = client.vms.snapshot_export_stream(vm, "s2", "s1")
    with pytest.raises(InvalidInput, match="another checksum"):
        bulk.stream_download(ticket["address"], ticket["token"], ticket["size_bytes"], "0" * 64, io.BytesIO(), 10)
    assert staging_files(cluster) == []
    with pytest.raises(AuthenticationError, match="unknown, already used or expired"):
        bulk.stream_download(ticket["address"], ticket["token"], ticket["size_bytes"], ticket["checksum"],
                             io.BytesIO(), 10)
    refused = pvc(cluster, "vm", "snapshot", "export", vm, "nosuch", "-")
    assert refused.exit_code == 1 and refused.stdout_bytes == b""
    assert len(refused.stderr.strip().splitlines()) == 1 and "no snapshot named 'nosuch'" in refused.stderr


def test_import_streamed_chain_and_every_bad_streamrefused_in_one_line(storage_cluster, tmp_path):
    cluster, client = storage_cluster, storage_cluster.client
    pool, vm = unique("si"), unique("sivm")
    client.storage.pool_add(pool)
    image = known_raw(tmp_path / "base.raw", size=8 * MiB, seed=9)
    client.storage.upload(pool, "disk", str(image))
    client.vms.define(domain_xml(vm, disk=f"{pool}/disk", domain_type="kvm"), target="hv1")
    copy = f"{vm}-copy"
    try:
        client.vms.snapshot_create(vm, "s1")
        full = pvc(cluster, "vm", "snapshot", "export", vm, "s1", "-").stdout_bytes
        changed = bytearray(image.read_bytes())
        changed[6 * MiB:6 * MiB + 8192] = bytes(range(256)) * 32
        write_in_place(cluster, pool, "disk", 6 * MiB, bytes(range(256)) * 32, tmp_path / "write")
        client.vms.snapshot_create(vm, "s2")
        incremental = pvc(cluster, "vm", "snapshot", "export", vm, "s2", "-", "-i", "s1").stdout_bytes
        client.storage.upload(pool, "disk", str(image), force=True)  # the source moves on past s2

        _bad_streams(cluster, client, vm, pool, full, incremental, tmp_path)

        imported = pvc(cluster, "vm", "snapshot", "import", "-", "--name", copy, input=full + incremental)
        assert imported.exit_code == 0, imported.output
        restored = client.vms.info(copy)
        assert restored["state"] == "stop" and restored["uuid"] != client.vms.info(vm)["uuid"]
        assert [disk["source"] for disk in restored["disks"]] == [f"{pool}/{copy}_disk0"]
        assert volume_bytes(cluster, pool, f"{copy}_disk0") == bytes(changed), "the bytes at s2"
        assert all(volume["pending"] is None for volume in client.storage.volume_list(pool))

        refused_in_one_line(pvc(cluster, "vm", "snapshot", "import", "-", "--name", copy, input=full + incremental),
                 f"a VM named '{copy}' exists already")
    finally:
        for name in (copy, vm):
            if any(row["name"] == name for row in client.vms.list()):
                client.vms.remove(name)
        client.storage.pool_remove(pool, force=True)


def _bad_streams(cluster, client, vm, pool, full: bytes, incremental: bytes, scratch: Path) -> None:
    """Each refused in one line, leaving no volume (recorded or stored), no VM and no staged file."""
    before = stored_names(cluster, pool)
    bad = f"{vm}-bad"

    def refused(data: bytes, words: str) -> None:
        refused_in_one_line(pvc(cluster, "vm", "snapshot", "import", "-", "--name", bad, input=data), words)
        nothing_left()

    def nothing_left() -> None:
        assert stored_names(cluster, pool) == before
        assert sorted(row["name"] for row in client.storage.volume_list(pool)) == ["disk"]
        assert all(row["name"] != bad for row in client.vms.list())
        assert staging_files(cluster) == []

    chain = full + incremental
    refused(chain[:-100], "is truncated: it ends 100 bytes short")
    refused(chain[:len(full) // 2], "export 1")
    flipped = bytearray(chain)
    flipped[len(full) + len(incremental) // 2] ^= 0xFF
    refused(bytes(flipped), f"export 2 ({vm}@s2) is corrupted")
    refused(incremental + full, f"the first export ({vm}@s2) is incremental since 's1'")
    refused(full + full, f"export 2 ({vm}@s1) does not build on the export before it")
    refused(full + _reheaded(flipped[len(full):]), f"export 2 ({vm}@s2) does not match what was announced")
    refused(b"not an export\n", "export 1 in the input is not a pvc-vm-stream/1 stream")

    links = [json.loads(export.partition(b"\n")[0])["manifest"] for export in (full, incremental)]
    with pytest.raises(NotFound, match="not on this node"):
        client.vms.snapshot_import_stream_end(links, "hv1", "0" * 32, name=bad)
    nothing_left()

    # A volume only the storage holds (made by hand, or left by a crash) is never taken for the import's own and
    # removed when the import is undone.
    with volume_by_hand(cluster, pool, f"{bad}_disk0", b"kept" * 1024, scratch / "by-hand"):
        refused_in_one_line(pvc(cluster, "vm", "snapshot", "import", "-", "--name", bad, input=chain),
                 f"volume '{pool}/{bad}_disk0' exists already (in the storage")
        assert volume_bytes(cluster, pool, f"{bad}_disk0") == b"kept" * 1024
        assert all(row["name"] != bad for row in client.vms.list())
        assert staging_files(cluster) == [], "the refused import's stage goes with the refusal"


def _reheaded(export: bytes) -> bytes:
    """A hostile client's export: its data changed and the head's checksum made to match, so that only the
    storage node's check of each volume's SHA-256 against the manifest can tell."""
    line, _, data = bytes(export).partition(b"\n")
    head = json.loads(line)
    head["checksum"] = bulk.checksum_of_bytes(data)
    return json.dumps(head).encode() + b"\n" + data
