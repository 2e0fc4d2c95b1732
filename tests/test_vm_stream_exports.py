"""Exports streamed to the client (`pvc vm snapshot export VM SNAPSHOT -`, `vms.snapshot_export_to`): full and
incremental, on a test-driver cluster with the file backend; the stream is the mirror's, behind its manifest, and
a download ticket is spent by one use whatever the client announces."""
import hashlib
import io
import json

import pytest

from pvc import bulk
from pvc.block_diff import read as read_diff
from pvc.cli.localcluster.guest import domain_xml
from pvc.errors import AuthenticationError, InvalidInput

from storage_support import known_raw, staging_files, unique, volume_bytes
from vm_support import pvc

MiB = 1024 * 1024
pytestmark = pytest.mark.parametrize("storage_cluster", ["file"], indirect=True)


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
    pool, vm = unique("st"), unique("stvm")
    client.storage.pool_add(pool)
    image = known_raw(tmp_path / "base.raw", size=8 * MiB, seed=5)
    client.storage.upload(pool, "disk", str(image))
    client.vms.define(domain_xml(vm, disk=f"{pool}/disk", domain_type="kvm"), target="hv1")
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
        (tmp_path / "s2.raw").write_bytes(bytes(changed))
        client.storage.upload(pool, "disk", str(tmp_path / "s2.raw"), force=True)
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
