"""Uploading disk images: every format qemu-img makes lands as the raw data qemu-img itself would convert it to;
hostile, broken, short or interrupted uploads are refused with one line and leave nothing behind. Each test
runs against the file backend and against a real single-node Ceph."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import select
import socket
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator

import pytest

from pvc import bulk
from pvc.errors import AuthenticationError, Conflict, InvalidInput, NotFound, OperationFailed

from helpers import eventually
from storage_support import (IMAGE_KINDS, MIB, known_raw, leftovers, make_image, pvc, qemu_raw_sha256, run,
                             stored_names, unique, volume_bytes, volume_sha256)


@pytest.fixture(scope="module")
def pool(storage_cluster):
    name = unique("up")
    storage_cluster.client.storage.pool_add(name)
    yield name
    storage_cluster.client.storage.pool_remove(name, True)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return tmp_path_factory.mktemp("images")


def assert_nothing_left(cluster, pool, volume):
    with pytest.raises(NotFound):
        cluster.client.storage.volume_info(pool, volume)
    assert volume not in stored_names(cluster, pool)
    assert leftovers(cluster, pool) == []


@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_upload_lands_as_qemu_img_converts_it(storage_cluster, pool, images, kind):
    image = make_image(images, kind)
    expected_sha256, virtual_size = qemu_raw_sha256(image, images)
    volume = unique(kind)

    recorded = storage_cluster.client.storage.upload(pool, volume, str(image))

    assert recorded["size_bytes"] == virtual_size
    assert volume_sha256(storage_cluster, pool, volume) == expected_sha256
    assert leftovers(storage_cluster, pool) == []


def test_cli_upload_with_given_format_shows_progress_and_the_volume(storage_cluster, pool, images):
    image = make_image(images, "qcow2", seed=11)
    expected_sha256, virtual_size = qemu_raw_sha256(image, images)

    result = pvc(storage_cluster, "storage", "volume", "upload", pool, "cli-disk", str(image), "--format", "qcow2",
                 "--json")

    assert result.exit_code == 0, result.stderr
    stages = [line for line in result.stderr.splitlines() if line.strip()]
    assert [stage.split()[0] for stage in stages] == ["Checksumming", "Uploading", "Importing"], result.stderr
    assert json.loads(result.stdout)["size_bytes"] == virtual_size
    assert volume_sha256(storage_cluster, pool, "cli-disk") == expected_sha256


def test_upload_from_standard_input(storage_cluster, pool, images):
    image = make_image(images, "vdi", seed=12)
    expected_sha256, _size = qemu_raw_sha256(image, images)

    result = pvc(storage_cluster, "storage", "volume", "upload", pool, "piped", "-", "--format", "vdi",
                 input=image.read_bytes())

    assert result.exit_code == 0, result.stderr
    assert volume_sha256(storage_cluster, pool, "piped") == expected_sha256


def test_api_upload_takes_a_file_like_object(storage_cluster, pool, images):
    image = make_image(images, "qcow2", seed=13)
    expected_sha256, _size = qemu_raw_sha256(image, images)

    storage_cluster.client.storage.upload(pool, "from-memory", io.BytesIO(image.read_bytes()))

    assert volume_sha256(storage_cluster, pool, "from-memory") == expected_sha256


def test_upload_grows_a_smaller_volume_and_keeps_a_larger_one(storage_cluster, pool, images):
    storage = storage_cluster.client.storage
    image = make_image(images, "qcow2", seed=14)
    expected_sha256, virtual_size = qemu_raw_sha256(image, images)
    storage.volume_add(pool, "small", "1M")
    storage.volume_add(pool, "large", "8M")

    assert storage.upload(pool, "small", str(image))["size_bytes"] == virtual_size
    assert storage.upload(pool, "large", str(image))["size_bytes"] == 8 * MIB

    assert volume_sha256(storage_cluster, pool, "small") == expected_sha256
    converted = images / "grown.raw"
    run("qemu-img", "convert", "-O", "raw", str(image), str(converted))
    padded = converted.read_bytes() + bytes(8 * MIB - virtual_size)
    assert volume_sha256(storage_cluster, pool, "large") == hashlib.sha256(padded).hexdigest()
    assert storage.volume_info(pool, "large")["size_bytes"] == 8 * MIB


def test_upload_over_a_volume_keeps_its_snapshots(storage_cluster, pool, images):
    storage = storage_cluster.client.storage
    storage.upload(pool, "snapped", str(make_image(images, "raw", seed=15)))
    before = volume_sha256(storage_cluster, pool, "snapped")
    storage.snapshot_add(pool, "snapped", "before")

    storage.upload(pool, "snapped", str(make_image(images, "qcow2", seed=16)))
    assert volume_sha256(storage_cluster, pool, "snapped") != before
    storage.snapshot_rollback(pool, "snapped", "before")

    assert volume_sha256(storage_cluster, pool, "snapped") == before


def node_backend(cluster):
    """The cluster's storage backend as its node builds it, to fail a replacement midway."""
    from pvc.plugins.storage_ceph import CephBackend
    from pvc.plugins.storage_file import FileBackend
    if cluster.backend == "file":
        return FileBackend({"storage_directory": str(cluster.local.storage_dir)})
    return CephBackend({"ceph_conf": cluster.local.state["ceph_conf"], "qemu_img_memory_limit_mib": 2048,
                        "qemu_img_cpu_limit_s": 3600})


@pytest.mark.parametrize("snapshotted", [False, True])
def test_replacement_failing_before_it_is_recorded_puts_the_old_data_back(storage_cluster, pool, snapshotted):
    storage, backend, volume = storage_cluster.client.storage, node_backend(storage_cluster), unique("replaced")
    old = os.urandom(MIB)
    storage.upload(pool, volume, io.BytesIO(old), "raw")
    if snapshotted:
        storage.snapshot_add(pool, volume, "kept")
    backend.volume_create(pool, ".upload-failing", 2 * MIB)

    with pytest.raises(RuntimeError, match="recording failed"):
        with backend.volume_replace(pool, ".upload-failing", volume):
            raise RuntimeError("recording failed")
    backend.volume_remove(pool, ".upload-failing")

    assert volume_bytes(storage_cluster, pool, volume) == old
    assert leftovers(storage_cluster, pool) == []
    if snapshotted:
        assert storage.snapshot_list(pool, volume)[0]["name"] == "kept"
        storage.snapshot_rollback(pool, volume, "kept")
        assert volume_bytes(storage_cluster, pool, volume) == old


# -- hostile images ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def host_secret(tmp_path_factory):
    """A file of the host that no upload may ever copy into a volume."""
    path = tmp_path_factory.mktemp("host") / "secret"
    path.write_bytes(b"HOST-SECRET " * 100000)
    return path


def hostile_qcow2_backing(directory, secret):
    path = directory / "backing.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", str(secret), "-F", "raw", str(path), "1M")
    return path


def hostile_qcow2_data_file(directory, secret):
    path = directory / "datafile.qcow2"
    copy = directory / "datafile-target.raw"
    copy.write_bytes(secret.read_bytes())
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", f"data_file={copy},data_file_raw=on", str(path),
        str(copy.stat().st_size))
    copy.write_bytes(secret.read_bytes())
    return path


def hostile_vmdk_descriptor(directory, secret):
    path = directory / "descriptor.vmdk"
    sectors = secret.stat().st_size // 512
    path.write_text(textwrap.dedent(f"""\
        # Disk DescriptorFile
        version=1
        CID=12345678
        parentCID=ffffffff
        createType="monolithicFlat"
        RW {sectors} FLAT "{secret}" 0
        ddb.adapterType = "ide"
        """))
    return path


def bare_vmdk_descriptor(directory, extent):
    """A descriptor without the usual comment, as qemu-img also probes it: ``version=1`` first."""
    path = directory / f"bare-{extent.name}.vmdk"
    path.write_text(f'version=1\ncreateType="monolithicFlat"\nRW 2048 FLAT "{extent}" 0\n')
    return path


def hostile_bare_vmdk_descriptor(directory, secret):
    return bare_vmdk_descriptor(directory, secret)


def hostile_vmdk_fifo_extent(directory, secret):
    """An extent qemu-img would block on forever, opening it: a FIFO no one writes to."""
    fifo = directory / "extent.fifo"
    if not fifo.exists():
        os.mkfifo(fifo)
    return bare_vmdk_descriptor(directory, fifo)


def hostile_vmdk_embedded_descriptor(directory, secret):
    """A sparse VMDK header with no capacity and a descriptor offset: qemu reads the embedded descriptor as a
    text one, and opens its extents (a FIFO here, which it would block on)."""
    fifo = directory / "embedded.fifo"
    if not fifo.exists():
        os.mkfifo(fifo)
    header = struct.pack("<4sIIQQQQIQQQ", b"KDMV", 1, 3, 0, 128, 1, 1, 512, 0, 0, 0).ljust(512, b"\0")
    descriptor = f'# Disk DescriptorFile\nversion=1\ncreateType="monolithicFlat"\nRW 2048 FLAT "{fifo}" 0\n'
    path = directory / "embedded.vmdk"
    path.write_bytes(header + descriptor.encode().ljust(512, b"\0"))
    return path


VMDK_DESCRIPTOR_REFUSED = "VMDK descriptor files are refused"


@pytest.mark.parametrize("make_hostile, image_format, reason", [
    (hostile_qcow2_backing, "auto", "backing file"),
    (hostile_qcow2_backing, "qcow2", "backing file"),
    (hostile_qcow2_data_file, "auto", "external data file"),
    (hostile_vmdk_descriptor, "auto", VMDK_DESCRIPTOR_REFUSED),
    (hostile_vmdk_descriptor, "vmdk", VMDK_DESCRIPTOR_REFUSED),
    (hostile_bare_vmdk_descriptor, "auto", VMDK_DESCRIPTOR_REFUSED),
    (hostile_bare_vmdk_descriptor, "vmdk", VMDK_DESCRIPTOR_REFUSED),
    (hostile_vmdk_fifo_extent, "auto", VMDK_DESCRIPTOR_REFUSED),
    (hostile_vmdk_fifo_extent, "vmdk", VMDK_DESCRIPTOR_REFUSED),
    (hostile_vmdk_embedded_descriptor, "auto", "embedded descriptor"),
], ids=["qcow2-backing", "qcow2-backing-given", "qcow2-data-file", "vmdk-extent", "vmdk-extent-given",
        "vmdk-bare-extent", "vmdk-bare-extent-given", "vmdk-fifo-extent", "vmdk-fifo-extent-given",
        "vmdk-embedded-descriptor"])
def test_image_naming_a_host_file_is_refused_before_conversion(storage_cluster, pool, images, host_secret,
                                                               make_hostile, image_format, reason):
    image = make_hostile(images, host_secret)
    volume = unique("hostile")

    started = time.monotonic()
    with pytest.raises(InvalidInput, match=reason) as refused:
        storage_cluster.client.storage.upload(pool, volume, str(image), image_format)

    assert time.monotonic() - started < 5, "refusing must not wait on anything the image names (a FIFO)"
    assert "\n" not in str(refused.value)
    assert_nothing_left(storage_cluster, pool, volume)


def test_hostile_image_over_an_existing_volume_leaves_it_untouched(storage_cluster, pool, images, host_secret):
    storage = storage_cluster.client.storage
    storage.upload(pool, "victim", str(make_image(images, "raw", seed=21)))
    before = volume_sha256(storage_cluster, pool, "victim")

    with pytest.raises(InvalidInput, match="backing file"):
        storage.upload(pool, "victim", str(hostile_qcow2_backing(images, host_secret)))

    assert volume_sha256(storage_cluster, pool, "victim") == before
    assert leftovers(storage_cluster, pool) == []


# -- broken images and wrong formats ------------------------------------------------------------------------------

def corrupt_qcow2(directory):
    image = make_image(directory, "qcow2", seed=31)
    data = bytearray(image.read_bytes())
    data[40:48] = b"\xff" * 8  # the L1 table offset: now far outside the file
    path = directory / "corrupt.qcow2"
    path.write_bytes(bytes(data))
    return path


def test_corrupt_qcow2_is_refused_and_nothing_is_created(storage_cluster, pool, images):
    with pytest.raises(InvalidInput, match="L1 table offset invalid"):
        storage_cluster.client.storage.upload(pool, "corrupt", str(corrupt_qcow2(images)))
    assert_nothing_left(storage_cluster, pool, "corrupt")


def test_corrupt_qcow2_over_an_existing_volume_leaves_it_untouched(storage_cluster, pool, images):
    storage = storage_cluster.client.storage
    storage.upload(pool, "kept", str(make_image(images, "raw", seed=32)))
    before = volume_sha256(storage_cluster, pool, "kept")

    with pytest.raises(InvalidInput):
        storage.upload(pool, "kept", str(corrupt_qcow2(images)), "qcow2")

    assert volume_sha256(storage_cluster, pool, "kept") == before
    assert storage.volume_info(pool, "kept")["size_bytes"] == 3 * MIB
    assert leftovers(storage_cluster, pool) == []


def test_wrong_format_is_refused(storage_cluster, pool, images):
    raw = known_raw(images / "plain.raw")
    result = pvc(storage_cluster, "storage", "volume", "upload", pool, "wrongfmt", str(raw), "--format", "qcow2")

    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == "Error: the upload is not a valid qcow2 image: Image is not in qcow2 format"
    assert_nothing_left(storage_cluster, pool, "wrongfmt")


def test_empty_file_is_refused_by_name(storage_cluster, pool, images):
    empty = images / "empty.img"
    empty.touch()
    result = pvc(storage_cluster, "storage", "volume", "upload", pool, "empty", str(empty))

    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == "Error: invalid upload size 0: the image must be a non-empty file"
    assert_nothing_left(storage_cluster, pool, "empty")


@pytest.mark.parametrize("kind", ["qcow2", "vmdk-monolithicSparse", "vdi"])
def test_container_given_as_raw_is_refused(storage_cluster, pool, images, kind):
    image = make_image(images, kind, seed=33)
    image_format = IMAGE_KINDS[kind][0]

    with pytest.raises(InvalidInput, match=f"is a {image_format} image, not raw as given"):
        storage_cluster.client.storage.upload(pool, "given-raw", str(image), "raw")
    assert_nothing_left(storage_cluster, pool, "given-raw")


def test_fixed_vhd_given_as_vpc_lands_as_qemu_img_converts_it(storage_cluster, pool, images):
    """A fixed VHD has its signature only in its footer: no magic at its start, so only a given format finds it."""
    source = known_raw(images / "fixed-source.raw", seed=34)
    image = images / "fixed.vpc"
    run("qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed", str(source), str(image))
    converted = images / "fixed.expected.raw"
    run("qemu-img", "convert", "-f", "vpc", "-O", "raw", str(image), str(converted))

    recorded = storage_cluster.client.storage.upload(pool, "fixed-vhd", str(image), "vpc")

    assert recorded["size_bytes"] == converted.stat().st_size
    assert volume_sha256(storage_cluster, pool, "fixed-vhd") == hashlib.sha256(converted.read_bytes()).hexdigest()


def test_image_larger_than_the_pool_can_hold_is_refused(storage_cluster, pool, images):
    huge = images / "huge.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", str(huge), "1P")

    with pytest.raises(InvalidInput, match="exceeds what pool"):
        storage_cluster.client.storage.upload(pool, "huge", str(huge))
    assert_nothing_left(storage_cluster, pool, "huge")


# -- the stream itself ------------------------------------------------------------------------------------------

def open_stream(cluster, pool, volume, size, checksum):
    """Begin an upload and send the header as a client would; the socket, its reader and the node's answer."""
    ticket = cluster.client.storage.upload_begin(pool, volume, size, checksum, "auto")
    host, port = ticket["address"].rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=30)
    reader = sock.makefile("rb")
    sock.sendall(json.dumps({"token": ticket["token"], "size_bytes": size, "checksum": checksum}).encode() + b"\n")
    return ticket, sock, reader, json.loads(reader.readline())


def stream_payload(images, kind):
    """Bytes that take each of the node's two ways in: raw data is handed on as it arrives, a qcow2 staged."""
    if kind == "raw":
        return os.urandom(2 * MIB)
    return make_image(images, "qcow2", size=4 * MIB, seed=61).read_bytes()


@pytest.mark.parametrize("kind", ["raw", "qcow2"])
def test_short_stream_is_refused(storage_cluster, pool, images, kind):
    data = stream_payload(images, kind)
    _ticket, sock, reader, answer = open_stream(storage_cluster, pool, "short", len(data),
                                                bulk.checksum_of_bytes(data))
    assert answer == {"ready": True}
    sock.sendall(data[:len(data) // 2])
    sock.shutdown(socket.SHUT_WR)

    result = json.loads(reader.readline())
    sock.close()

    assert result["error"] == "InvalidInput" and "short" in result["message"]
    assert_nothing_left(storage_cluster, pool, "short")


@pytest.mark.parametrize("kind", ["raw", "qcow2"])
def test_stream_with_another_checksum_is_refused(storage_cluster, pool, images, kind):
    data = stream_payload(images, kind)
    _ticket, sock, reader, _answer = open_stream(storage_cluster, pool, "mismatch", len(data), "0" * 64)
    sock.sendall(data)

    result = json.loads(reader.readline())
    sock.close()

    assert result["error"] == "InvalidInput" and "checksum" in result["message"]
    assert_nothing_left(storage_cluster, pool, "mismatch")


def test_token_is_single_use_and_bound_to_its_size(storage_cluster, pool):
    data = os.urandom(MIB)
    digest = bulk.checksum_of_bytes(data)
    ticket, sock, reader, answer = open_stream(storage_cluster, pool, "bound", len(data) + 1, digest)
    sock.close()
    assert answer == {"ready": True}

    host, port = ticket["address"].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as again:
        again.sendall(json.dumps({"token": ticket["token"], "size_bytes": len(data), "checksum": digest}).encode()
                      + b"\n")
        refused = json.loads(again.makefile("rb").readline())
    assert refused["error"] == "AuthenticationError"

    _ticket, sock, reader, answer = open_stream(storage_cluster, pool, "bound", len(data), digest)
    sock.close()
    assert answer == {"ready": True}
    ticket = storage_cluster.client.storage.upload_begin(pool, "bound", len(data), digest, "auto")
    host, port = ticket["address"].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as wrong:
        wrong.sendall(json.dumps({"token": ticket["token"], "size_bytes": len(data) * 2,
                                  "checksum": digest}).encode() + b"\n")
        refused = json.loads(wrong.makefile("rb").readline())
    assert refused["error"] == "InvalidInput" and "declared" in refused["message"]
    assert_nothing_left(storage_cluster, pool, "bound")


def test_token_is_refused_after_a_completed_upload(storage_cluster, pool):
    """A token is spent by the upload it admitted: a replay of a finished upload changes nothing."""
    storage = storage_cluster.client.storage
    data, replayed = os.urandom(MIB), os.urandom(MIB)
    checksum = bulk.checksum_of_bytes(data)
    ticket = storage.upload_begin(pool, "finished", MIB, checksum, "raw")
    bulk.stream_upload(ticket["address"], ticket["token"], bulk.SpooledSource(io.BytesIO(data)), checksum, 10)
    storage.upload_end(pool, "finished")  # as the client does: the node's record shows in the coordinator's reads
    assert volume_bytes(storage_cluster, pool, "finished") == data, "the upload was completed"

    for content in (data, replayed):
        with pytest.raises(AuthenticationError, match="upload token unknown, already used or expired"):
            bulk.stream_upload(ticket["address"], ticket["token"], bulk.SpooledSource(io.BytesIO(content)),
                               bulk.checksum_of_bytes(content), 10)
    assert volume_bytes(storage_cluster, pool, "finished") == data
    assert leftovers(storage_cluster, pool) == []
    storage.volume_remove(pool, "finished")


def test_token_is_bound_to_the_declared_checksum(storage_cluster, pool):
    """Whoever sees a token cannot spend it on other content of the same size."""
    declared, other = os.urandom(MIB), os.urandom(MIB)
    ticket = storage_cluster.client.storage.upload_begin(pool, "hijacked", MIB, bulk.checksum_of_bytes(declared),
                                                         "auto")

    with pytest.raises(InvalidInput, match="another checksum than the upload was declared with"):
        bulk.stream_upload(ticket["address"], ticket["token"], bulk.SpooledSource(io.BytesIO(other)),
                           bulk.checksum_of_bytes(other), 10)
    assert_nothing_left(storage_cluster, pool, "hijacked")


def test_upload_is_refused_if_a_vm_took_the_volume_after_it_began(storage_cluster, pool):
    storage, vm = storage_cluster.client.storage, unique("late-user")
    storage.volume_add(pool, "taken", "1M")
    before = volume_sha256(storage_cluster, pool, "taken")
    data = os.urandom(MIB)
    checksum = bulk.checksum_of_bytes(data)
    ticket = storage.upload_begin(pool, "taken", MIB, checksum, "raw")
    storage_cluster.client.vms.define(
        f"<domain type='test'><name>{vm}</name><memory unit='MiB'>256</memory><vcpu>1</vcpu><os><type>hvm</type>"
        f"</os><devices><disk type='volume' device='disk'><source pool='{pool}' volume='taken'/>"
        "<target dev='vda'/></disk></devices></domain>")
    try:
        with pytest.raises(Conflict, match=f"used by VM\\(s\\) {vm}; refusing to overwrite it unless forced"):
            bulk.stream_upload(ticket["address"], ticket["token"], bulk.SpooledSource(io.BytesIO(data)), checksum,
                               10)
        assert volume_sha256(storage_cluster, pool, "taken") == before
        assert leftovers(storage_cluster, pool) == []

        storage.upload(pool, "taken", io.BytesIO(data), "raw", force=True)
        assert volume_bytes(storage_cluster, pool, "taken") == data
    finally:
        storage_cluster.client.vms.remove(vm)


def test_client_killed_mid_upload_leaves_nothing(storage_cluster, pool, images):
    image = make_image(images, "qcow2", size=24 * MIB, seed=41)
    client_script = textwrap.dedent("""
        import json, os, signal, socket, sys
        import pvc
        from pvc import bulk
        cluster = pvc.connect(sys.argv[1], sys.argv[2])
        data = open(sys.argv[5], "rb").read()
        checksum = bulk.checksum_of_bytes(data)
        ticket = cluster.storage.upload_begin(sys.argv[3], sys.argv[4], len(data), checksum, "auto")
        host, port = ticket["address"].rsplit(":", 1)
        sock = socket.create_connection((host, int(port)))
        header = {"token": ticket["token"], "size_bytes": len(data), "checksum": checksum}
        sock.sendall(json.dumps(header).encode() + b"\\n")
        sock.makefile("rb").readline()
        sock.sendall(data[:len(data) // 2])
        print("half sent", flush=True)
        sys.stdin.read()
        """)
    client = subprocess.Popen([sys.executable, "-c", client_script, storage_cluster.local.uris[0],
                               storage_cluster.local.state["api_key"], pool, "killed", str(image)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert client.stdout.readline() == b"half sent\n", client.stderr.read().decode()
        assert eventually(lambda: leftovers(storage_cluster, pool), timeout=10), \
            "the half-sent upload is staged when its client is killed"
    finally:
        client.kill()
        client.communicate()

    assert eventually(lambda: leftovers(storage_cluster, pool) == [], timeout=10)
    assert_nothing_left(storage_cluster, pool, "killed")


def test_upload_into_unknown_pool_or_with_bad_names_is_refused(storage_cluster, pool, images):
    image = str(make_image(images, "raw", seed=51))
    storage = storage_cluster.client.storage
    with pytest.raises(NotFound, match="no storage pool named 'nopool'"):
        storage.upload("nopool", "disk", image)
    for bad in ("../etc", "a/b", ".hidden", "with space", "ctl\x07"):
        with pytest.raises(InvalidInput, match="invalid volume name"):
            storage.upload(pool, bad, image)
    with pytest.raises(InvalidInput, match="unknown image format"):
        storage.upload(pool, "disk", image, "dmg")
    assert leftovers(storage_cluster, pool) == []
    assert "disk" not in stored_names(storage_cluster, pool)


def test_made_up_token_is_refused_by_the_channel(storage_cluster, pool):
    data = b"0123456789"
    ticket = storage_cluster.client.storage.upload_begin(pool, "made-up", 10, bulk.checksum_of_bytes(data), "raw")

    with pytest.raises(AuthenticationError, match="upload token unknown"):
        bulk.stream_upload(ticket["address"], "not-" + ticket["token"], bulk.SpooledSource(io.BytesIO(data)),
                           bulk.checksum_of_bytes(data), 10)
    assert_nothing_left(storage_cluster, pool, "made-up")


@pytest.fixture
def listener():
    """Starts bulk listeners that admit no token; all stopped after the test."""
    from pvc.node.uploads import Tickets, UploadListener
    started = []

    def start(header_deadline: float, max_unadmitted: int = 16) -> UploadListener:
        started.append(UploadListener("127.0.0.1", 0, Tickets(60), lambda: None, header_deadline=header_deadline,
                                      max_unadmitted=max_unadmitted))
        started[-1].start()
        return started[-1]
    yield start
    for listening in started:
        listening.stop()


def connect(listener) -> socket.socket:
    host, port = listener.address.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


def refuses_a_malformed_header(listener) -> bool:
    try:
        with connect(listener) as sock:
            sock.sendall(b"not json\n")
            return b"is not JSON" in sock.makefile("rb").readline()
    except OSError:
        return False


def test_header_trickled_past_its_deadline_is_refused(listener):
    started = time.monotonic()
    with connect(listener(header_deadline=1)) as sock:
        reader = sock.makefile("rb")
        sock.sendall(b"{")
        while not select.select([sock], [], [], 0.2)[0]:
            sock.sendall(b" ")
        answer = json.loads(reader.readline())

    assert answer["error"] == "InvalidInput" and "did not arrive in time" in answer["message"]
    assert time.monotonic() - started < 3


def test_unadmitted_connections_are_capped(listener):
    capped = listener(header_deadline=30, max_unadmitted=2)
    waiting = [connect(capped), connect(capped)]
    with connect(capped) as refused:
        assert refused.recv(1) == b""
    assert refuses_a_malformed_header(capped) is False
    for sock in waiting:
        sock.sendall(b"not json\n")
        assert b"is not JSON" in sock.makefile("rb").readline()
        sock.close()

    assert eventually(lambda: refuses_a_malformed_header(capped), timeout=5)


# -- qemu-img's wall-clock limits ---------------------------------------------------------------------------------

def test_qemu_img_blocked_on_io_is_stopped_by_its_wall_clock_limit(tmp_path, monkeypatch):
    """A process blocked opening a FIFO uses no CPU time: only the wall-clock limit ends it."""
    from pvc import qemu_img
    from pvc.errors import OperationFailed
    fifo = tmp_path / "blocks.fifo"
    os.mkfifo(fifo)
    monkeypatch.setattr(qemu_img, "INFO_TIMEOUT_S", 1)
    monkeypatch.setattr(qemu_img, "CONVERT_TIMEOUT_S", 1)

    started = time.monotonic()
    with pytest.raises(InvalidInput, match="took over 1 s"):
        qemu_img.QemuImg().info(str(fifo), "raw")
    with pytest.raises(OperationFailed, match="took over 1 s"):
        qemu_img.QemuImg().convert(str(fifo), "raw", str(tmp_path / "out.raw"), MIB)

    assert time.monotonic() - started < 10


def test_a_refused_staging_export_fails_qemu_img_even_on_what_has_arrived(tmp_path):
    """An upload's conversion starts before the pool has said whether the image fits; a no fails qemu-img's
    reads, even of what has arrived, so that qemu-img stops by itself and lets go of its target."""
    from pvc.node.growing_export import GrowingFileExport
    from pvc.qemu_img import QemuImg
    staged = tmp_path / "staged.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", str(staged), "64M")
    export = GrowingFileExport(staged, staged.stat().st_size, tmp_path / "staged.nbd")
    export.start()
    export.advance(staged.stat().st_size)
    qemu_img = QemuImg(source_complete=export.settled, working_directory=str(export.directory))
    try:
        assert qemu_img.info(export.url, "qcow2")["virtual-size"] == 64 * MIB, "the whole image has arrived"
        export.refuse()
        with pytest.raises(InvalidInput, match="Input/output error"):
            qemu_img.info(export.url, "qcow2")
    finally:
        export.close()


# -- sizes that are not whole sectors -----------------------------------------------------------------------------

def test_raw_upload_keeps_its_true_size(storage_cluster, pool):
    data = os.urandom(1000)

    recorded = storage_cluster.client.storage.upload(pool, "odd-raw", io.BytesIO(data))

    assert recorded["size_bytes"] == 1000
    assert volume_bytes(storage_cluster, pool, "odd-raw") == data


def test_staged_image_of_odd_length_converts_quickly(storage_cluster, pool, images):
    """qemu rounds the staging export up to a whole sector and reads the tail: it must get zeros, not wait."""
    image = images / "odd-length.qcow2"
    image.write_bytes(make_image(images, "qcow2", seed=61).read_bytes() + b"\0" * 100)
    expected_sha256, virtual_size = qemu_raw_sha256(image, images)

    started = time.monotonic()
    recorded = storage_cluster.client.storage.upload(pool, "odd-qcow2", str(image))

    assert time.monotonic() - started < 20
    assert recorded["size_bytes"] == virtual_size
    assert volume_sha256(storage_cluster, pool, "odd-qcow2") == expected_sha256
    assert leftovers(storage_cluster, pool) == []


def test_staging_export_pads_an_odd_length_with_zeros_once_complete(tmp_path):
    from pvc.node.growing_export import GrowingFileExport
    data = os.urandom(1000)
    staged = tmp_path / "staged"
    staged.write_bytes(data[:600])
    export = GrowingFileExport(staged, len(data), tmp_path / "staged.nbd")
    export.start()
    export.advance(600)
    try:
        converting = subprocess.Popen(["qemu-img", "convert", "-f", "raw", "-O", "raw", export.url,
                                       str(tmp_path / "out.raw")], stderr=subprocess.PIPE, cwd=export.directory)
        time.sleep(0.5)
        assert converting.poll() is None, "the padding past the true end waits for the upload to complete"
        with open(staged, "ab") as file:
            file.write(data[600:])
        export.advance(len(data))
        assert converting.wait(timeout=10) == 0, converting.stderr.read().decode()
    finally:
        export.close()
    assert (tmp_path / "out.raw").read_bytes() == data + bytes(24)


@pytest.mark.parametrize("ending", ["complete", "stalled", "abandoned", "closed early"])
def test_staged_receive_lands_the_stream_or_says_why_not(tmp_path, ending):
    """The receiving end of a staged upload, on a socket pair, a whole piece hashed before it ends: whatever the
    sender does, the export hears how far the file got and whether it failed, and the error names what happened."""
    from pvc.node.upload_stream import StagedReceive
    data = os.urandom(bulk.PIECE_BYTES + 3 * MIB + 5)
    cut = bulk.PIECE_BYTES + MIB
    sender, receiving = socket.socketpair()
    receiving.settimeout(1)
    staged = tmp_path / "staged"
    staged.touch()
    landed, failed = [], []
    receiver = StagedReceive(receiving, data[:1000], str(staged), len(data), bulk.checksum_of_bytes(data),
                             landed.append, lambda: failed.append(True))
    receiver.start()
    with sender, receiving:
        sender.sendall(data[1000:cut] if ending != "complete" else data[1000:])
        if ending == "closed early":
            sender.shutdown(socket.SHUT_WR)
        if ending == "abandoned":
            eventually(lambda: landed and landed[-1] == cut, timeout=5)
            receiver.stop()
        receiver.join(timeout=10)
        assert not receiver.is_alive()

    expected = {"complete": None, "stalled": "stalled", "abandoned": "abandoned", "closed early": "short"}[ending]
    if expected is None:
        receiver.raise_if_failed()
        assert staged.read_bytes() == data and landed[-1] == len(data) and not failed
    else:
        with pytest.raises(InvalidInput, match=expected):
            receiver.raise_if_failed()
        assert landed[-1] == cut and failed
        assert staged.read_bytes()[:cut] == data[:cut]


# -- leftovers ----------------------------------------------------------------------------------------------------

def test_staging_export_works_in_a_directory_too_deep_for_a_socket_path(tmp_path):
    """A Unix socket's path may not exceed 107 bytes; a staging directory's may."""
    from pvc.node.growing_export import GrowingFileExport
    from pvc.qemu_img import QemuImg
    staging = tmp_path / ("deep" * 30)
    staging.mkdir()
    staged = staging / ".stage-deep"
    run("qemu-img", "create", "-q", "-f", "qcow2", str(staged), "5M")
    export = GrowingFileExport(staged, staged.stat().st_size, staging / ".stage-deep.nbd")
    export.start()
    export.advance(staged.stat().st_size)
    try:
        info = QemuImg(working_directory=str(export.directory)).info(export.url, "qcow2")
    finally:
        export.close()
    assert info["virtual-size"] == 5 * MIB
    assert sorted(path.name for path in staging.iterdir()) == [".stage-deep"]


@contextlib.contextmanager
def staging_with_one_inode_left(cluster) -> Iterator[Path]:
    """The node's staging directory on a small tmpfs of its own with one inode left: an upload's staging file
    takes it, and the export's socket beside it cannot be made (ENOSPC), as on a node whose staging file system
    has run out of inodes."""
    staging = cluster.local.staging_dir(cluster.local.node_names[0])
    run("mount", "-t", "tmpfs", "-o", "size=64m,nr_inodes=3", "tmpfs", str(staging))
    try:
        (staging / "filler").write_bytes(b"")  # the directory itself, this file, and one inode left
        yield staging
    finally:
        run("umount", str(staging))


def test_staging_file_is_removed_when_its_export_cannot_be_made(storage_cluster, pool, images):
    image = make_image(images, "qcow2", seed=61)
    with staging_with_one_inode_left(storage_cluster) as staging:
        with pytest.raises(OperationFailed, match="No space left on device"):
            storage_cluster.client.storage.upload(pool, "unexported", str(image), "qcow2")
        assert sorted(path.name for path in staging.iterdir()) == ["filler"], "the staging file was removed"
    assert_nothing_left(storage_cluster, pool, "unexported")


def test_node_start_sweeps_its_own_upload_leftovers(storage_cluster, pool):
    local, backend = storage_cluster.local, node_backend(storage_cluster)
    node = local.node_names[0]
    local.stop_daemon("pvcnoded", node)
    try:
        backend.volume_create(pool, f".upload-{node}-1-0-5ca1ab1e", MIB)
        backend.volume_create(pool, f".upload-{node}-1-0-5ca1ab1e-disk0", MIB)
        backend.volume_create(pool, f".upload-{node}-b-1-0-0ddba11a", MIB)
        backend.volume_create(pool, ".upload-elsewhere-1-0-0ddba11a", MIB)
        for name in (".stage-crashed", ".stage-crashed.nbd", ".probe-crashed"):
            (local.staging_dir(node) / name).write_bytes(b"left")
        assert len(leftovers(storage_cluster, pool)) == 7, "the leftovers are there before the node starts"
    finally:
        local.start_node_daemon(node)

    others = [".upload-elsewhere-1-0-0ddba11a", f".upload-{node}-b-1-0-0ddba11a"]
    assert eventually(lambda: leftovers(storage_cluster, pool) == sorted(others), timeout=30), \
        f"{node} sweeps its own leftovers only, not those of node {node}-b: {leftovers(storage_cluster, pool)}"
    for name in others:
        backend.volume_remove(pool, name)
    assert eventually(lambda: _uploads(storage_cluster, pool), timeout=30)


def _uploads(cluster, pool) -> bool:
    try:
        return cluster.client.storage.upload(pool, "after-restart", io.BytesIO(b"fresh"))["size_bytes"] == 5
    except Exception:
        return False


def test_file_pool_holding_a_volume_file_keeps_its_snapshots(tmp_path):
    from pvc.errors import OperationFailed
    from pvc.plugins.storage_file import FileBackend
    backend = FileBackend({"storage_directory": str(tmp_path)})
    backend.pool_create("kept", {})
    backend.volume_create("kept", "unrecorded", MIB)
    backend.snapshot_create("kept", "unrecorded", "s1")

    with pytest.raises(OperationFailed, match="still holds volumes"):
        backend.pool_remove("kept")
    assert (tmp_path / "kept" / ".snapshots" / "unrecorded" / "s1").is_file()
