"""The OVA importer on real archives (real qemu-img disks, tarfile archives) read as non-seekable streams into
real file-backend volumes: good appliances in every packaging, and hostile ones refused in one line with no
staging file left behind."""
import gzip
import hashlib
import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from pvc import plugin_manager
from pvc.errors import InvalidInput
from pvc.qemu_img import QemuImg
from pvc.plugins.storage_file import FileBackend
from storage_support import mounted_xfs
from ova_support import (DiskSpec, LocalVolumes, appliance_ova, build_ova, disk_members, images, manifest,
                         same_image, vmware_descriptor)

MiB = 1 << 20
DISK_BYTES = 8 * MiB


class PipeStream(io.RawIOBase):
    """The archive as a pipe gives it: readable, not seekable, in arbitrary short pieces."""

    def __init__(self, path: Path):
        self._file = open(path, "rb")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._file.read(min(len(buffer), 300_000))
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self._file.close()
        super().close()


@pytest.fixture(scope="module")
def disks(tmp_path_factory):
    return images(tmp_path_factory.mktemp("images"), 2, DISK_BYTES)


@pytest.fixture
def place(tmp_path):
    backend = FileBackend({"storage_directory": str(tmp_path / "storage")})
    backend.pool_create("pool", {})
    staging = tmp_path / "staging"
    staging.mkdir()
    return LocalVolumes(backend, "pool", staging)


def importer():
    return plugin_manager.load().get("pvc_appliance_importers", "ova")


def run_import(ova: Path, place: LocalVolumes):
    with PipeStream(ova) as stream:
        return importer().import_appliance(stream, ova.stat().st_size, place, QemuImg())


def volume_path(place: LocalVolumes, index: int) -> str:
    return place.target(index).qemu_name


def test_vmware_ova_with_two_disks_one_gzipped(tmp_path, disks, place):
    specs = [DiskSpec(disks[0][1], 16, "byte * 2^20"), DiskSpec(disks[1][1], 8, "byte*2^20", gzip=True)]
    result = run_import(appliance_ova(tmp_path, "vmw", specs, vcpus=2, memory="1024"), place)
    assert result.details["manifest"] == "verified (SHA256)"
    assert (result.hardware["vcpus"], result.hardware["memory_bytes"], result.hardware["firmware"]) == \
        (2, 1024 * MiB, "efi")
    assert [(volume["index"], volume["size_bytes"]) for volume in result.volumes] == [(0, 16 * MiB), (1, 8 * MiB)]
    for index, (raw, _vmdk) in enumerate(disks):
        assert same_image(volume_path(place, index), str(raw))
    assert os.path.getsize(volume_path(place, 0)) == 16 * MiB
    assert list(place.staging_directory.iterdir()) == []


def test_virtualbox_ova_with_a_chunked_disk_and_a_sha1_manifest(tmp_path, disks, place):
    specs = [DiskSpec(disks[0][1], DISK_BYTES, chunk_size=1 * MiB)]
    result = run_import(appliance_ova(tmp_path, "vbox", specs, style="virtualbox", checksum="sha1"), place)
    assert result.details["manifest"] == "verified (SHA1)"
    assert result.hardware["disks"][0]["bus"] == "sata" and result.hardware["memory_bytes"] == 512 * MiB
    assert same_image(volume_path(place, 0), str(disks[0][0]))


def test_no_manifest_is_reported_and_a_blank_disk_is_made(tmp_path, disks, place):
    specs = [DiskSpec(disks[0][1], DISK_BYTES), DiskSpec(None, 4, "byte * 2^20")]
    result = run_import(appliance_ova(tmp_path, "plain", specs, checksum=None), place)
    assert result.details["manifest"] == "absent"
    assert [volume["source"] for volume in result.volumes] == ["plain-disk1.vmdk", None]
    assert os.path.getsize(volume_path(place, 1)) == 4 * MiB


@pytest.mark.parametrize("style, covers, checksum, status", [
    ("vmware", "all", "sha256", "verified (SHA256)"),
    ("virtualbox", "all", "sha256", "verified (SHA256)"),
    ("virtualbox", "disks", "sha1", "partial (SHA1)"),
    ("vmware", "disks", "sha512", "partial (SHA512)"),
    ("virtualbox", "all", None, "absent"),
])
def test_each_exporters_manifest_is_verified_and_what_it_leaves_out_is_reported(style, covers, checksum, status,
                                                                                 tmp_path, disks, place):
    """ovftool writes ``SHA256(f)= hex``, VirtualBox ``SHA256 (f) = hex``; some list only the disks."""
    specs = [DiskSpec(disks[0][1], DISK_BYTES), DiskSpec(disks[1][1], DISK_BYTES, gzip=True)]
    ova = appliance_ova(tmp_path, "app", specs, style=style, checksum=checksum, covers=covers)
    if checksum:
        line = tarfile.open(ova).extractfile("app.mf").readline().decode()
        assert line.startswith(f"{checksum.upper()}(app" if style == "vmware" else f"{checksum.upper()} (app")

    result = run_import(ova, place)

    assert result.details["manifest"] == status
    unverified = {"all": [], "disks": ["app.ovf"]}[covers] if checksum else \
        ["app.ovf", "app-disk1.vmdk", "app-disk2.vmdk.gz"]
    assert result.details["unverified_files"] == unverified
    for index, (raw, _vmdk) in enumerate(disks):
        assert same_image(volume_path(place, index), str(raw))


def _manifest_lines(*lines: str) -> bytes:
    return "".join(f"{line}\n" for line in lines).encode()


def _digest(data: bytes, algorithm: str = "sha256") -> str:
    return hashlib.new(algorithm, data).hexdigest()


MANIFEST_REFUSALS = {
    "wrong disk digest, BSD style": (
        lambda d, dsk: f"SHA256 ({dsk[0]}) = {_digest(b'other')}",
        "SHA256 checksum of 'h-disk1.vmdk' does not match"),
    "wrong descriptor digest, only it listed": (
        lambda d, dsk: f"SHA1({d[0]})= {_digest(b'other', 'sha1')}", "SHA1 checksum of 'h.ovf' does not match"),
    "unknown algorithm": (
        lambda d, dsk: f"MD5 ({dsk[0]}) = {_digest(dsk[1], 'md5')}", "gives 'h-disk1.vmdk' a MD5 digest"),
    "file the archive lacks": (
        lambda d, dsk: f"SHA256({d[0]})= {_digest(d[1])}\nSHA256(h-disk2.vmdk)= {_digest(b'x')}",
        "lists 'h-disk2.vmdk', which the OVA does not contain"),
    "digest of the wrong length": (
        lambda d, dsk: f"SHA256 ({dsk[0]}) = {_digest(dsk[1], 'sha1')}",
        "gives 'h-disk1.vmdk' a SHA256 digest that is not 64 hexadecimal digits"),
    "garbage line": (lambda d, dsk: "this is not a digest", "line 1 of the manifest 'h.mf'"),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_REFUSALS))
def test_every_digest_a_manifest_lists_is_verified(case, tmp_path, disks, place):
    line, message = MANIFEST_REFUSALS[case]
    descriptor, disk = _descriptor_and_disk(disks)
    ova = build_ova(tmp_path / "h.ova", [descriptor, ("h.mf", _manifest_lines(line(descriptor, disk))), disk])
    _assert_refused(ova, place, message)


def _descriptor_and_disk(disks, name="h"):
    specs = [DiskSpec(disks[0][1], DISK_BYTES)]
    return (f"{name}.ovf", vmware_descriptor(name, specs)), disk_members(name, specs)[0]


def _special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


HOSTILE = {
    "not a tar": (lambda d, dsk: None, "not a tar archive"),
    "no descriptor": (lambda d, dsk: [dsk], "first member 'h-disk1.vmdk' is not an OVF descriptor"),
    "descriptor not first": (lambda d, dsk: [dsk, d], "first member 'h-disk1.vmdk' is not an OVF descriptor"),
    "two descriptors": (lambda d, dsk: [d, ("other.ovf", d[1]), dsk], "second descriptor 'other.ovf'"),
    "dot-dot": (lambda d, dsk: [d, ("../h-disk1.vmdk", dsk[1])], "path outside the archive"),
    "absolute": (lambda d, dsk: [d, ("/etc/h-disk1.vmdk", dsk[1])], "path outside the archive"),
    "manifest mismatch": (lambda d, dsk: [d, ("h.mf", manifest([d, (dsk[0], b"other")])), dsk],
                          "SHA256 checksum of 'h-disk1.vmdk' does not match"),
    "missing file": (lambda d, dsk: [d], "references 'h-disk1.vmdk' but the OVA does not contain it"),
    "unreferenced member": (lambda d, dsk: [d, dsk, ("extra.bin", b"x")], "'extra.bin', which its descriptor"),
    "wrong size": (lambda d, dsk: [d, (dsk[0], dsk[1] + b"\0" * 512)], "declares"),
    "not its format": (lambda d, dsk: [(d[0], d[1].replace(str(len(dsk[1])).encode(), b"4096")),
                                       (dsk[0], b"\1" * 4096)], "declared vmdk but its content is raw"),
    "entity": (lambda d, dsk: [(d[0], b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>' + d[1][38:]), dsk],
               "DTD or entities"),
    "capacity too small": (lambda d, dsk: [(d[0], d[1].replace(f'ovf:capacity="{DISK_BYTES}"'.encode(),
                                                               b'ovf:capacity="1" ovf:capacityAllocationUnits="MB"')),
                                           dsk], "more than its declared capacity of 1048576 bytes"),
}
SPECIAL = {
    "symlink": (_special("h-disk1.vmdk", tarfile.SYMTYPE, "/etc/shadow"), "is a symbolic link"),
    "hardlink": (_special("h-disk1.vmdk", tarfile.LNKTYPE, "h.ovf"), "is a hard link"),
    "device": (_special("h-disk1.vmdk", tarfile.CHRTYPE), "is a device"),
    "directory": (_special("sub", tarfile.DIRTYPE), "is a directory"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_is_refused_in_one_line(case, tmp_path, disks, place):
    build, message = HOSTILE[case]
    descriptor, disk = _descriptor_and_disk(disks)
    members = build(descriptor, disk)
    ova = tmp_path / "h.ova"
    if members is None:
        ova.write_bytes(os.urandom(20000))
    else:
        build_ova(ova, members)
    _assert_refused(ova, place, message)


@pytest.mark.parametrize("case", sorted(SPECIAL))
def test_links_devices_and_directories_are_refused(case, tmp_path, disks, place):
    info, message = SPECIAL[case]
    descriptor, _disk = _descriptor_and_disk(disks)
    _assert_refused(build_ova(tmp_path / "h.ova", [descriptor], special=[info]), place, message)


def gzipped_zeros_ova(directory: Path, name: str, zeros: int, capacity_mb: int) -> Path:
    """An OVA whose one disk is `zeros` bytes of zeros, gzip'd, declared `capacity_mb` MB."""
    bomb = gzip.compress(b"\0" * zeros, compresslevel=9)
    specs = [DiskSpec(directory / f"{name}.vmdk", capacity_mb, "MB", gzip=False)]
    specs[0].image.write_bytes(bomb)
    descriptor = vmware_descriptor(name, specs).replace(f'ovf:href="{name}-disk1.vmdk"'.encode(),
                                                        f'ovf:href="{name}-disk1.vmdk" ovf:compression="gzip"'.encode())
    return build_ova(directory / f"{name}.ova", [(f"{name}.ovf", descriptor), (f"{name}-disk1.vmdk", bomb)])


def test_gzip_bomb_is_stopped_at_the_disks_capacity(tmp_path, place):
    _assert_refused(gzipped_zeros_ova(tmp_path, "b", 80 * MiB, 1), place, "holds more than")


def test_oversized_extended_header_is_refused(tmp_path, disks, place):
    descriptor, _disk = _descriptor_and_disk(disks)
    ova = tmp_path / "pax.ova"
    with tarfile.open(ova, "w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo(descriptor[0])
        info.size = len(descriptor[1])
        archive.addfile(info, io.BytesIO(descriptor[1]))
        info = tarfile.TarInfo("h-disk1.vmdk")
        info.pax_headers = {"comment": "x" * (200 << 10)}
        archive.addfile(info, io.BytesIO(b""))
    _assert_refused(ova, place, "extended header")


def _assert_refused(ova: Path, place: LocalVolumes, message: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        run_import(ova, place)
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)
    assert list(place.staging_directory.iterdir()) == []


def test_qemu_img_reads_the_volume_as_raw(tmp_path, disks, place):
    """The volume is plain raw data: what a VM's disk will be."""
    run_import(appliance_ova(tmp_path, "r", [DiskSpec(disks[1][1], DISK_BYTES)]), place)
    info = subprocess.run(["qemu-img", "info", "-f", "raw", "--output=json", volume_path(place, 0)],
                          capture_output=True, text=True, check=True)
    assert f'"virtual-size": {DISK_BYTES}' in info.stdout


def test_disks_larger_than_the_pool_can_hold_are_refused_before_any_is_written(tmp_path, disks, place):
    ova = appliance_ova(tmp_path, "huge", [DiskSpec(disks[0][1], 64, "byte * 2^50")])
    _assert_refused(ova, place, "do not fit pool 'pool'")
    assert place.backend.volume_names("pool") == []


@pytest.mark.parametrize("tar_format", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_long_member_names_in_gnu_and_pax_archives(tar_format, tmp_path, disks, place):
    href = "a-disk-name-longer-than-the-hundred-characters-a-ustar-header-holds-" + "x" * 60 + ".vmdk"
    specs = [DiskSpec(disks[0][1], DISK_BYTES, href=href)]
    members = [("long.ovf", vmware_descriptor("long", specs)), *disk_members("long", specs)]
    result = run_import(build_ova(tmp_path / "long.ova", members, tar_format=tar_format), place)
    assert result.volumes[0]["source"] == href
    assert same_image(volume_path(place, 0), str(disks[0][0]))


def test_truncated_archive_is_refused(tmp_path, disks, place):
    ova = appliance_ova(tmp_path, "t", [DiskSpec(disks[0][1], DISK_BYTES), DiskSpec(disks[1][1], DISK_BYTES)])
    ova.write_bytes(ova.read_bytes()[:ova.stat().st_size * 4 // 5])
    _assert_refused(ova, place, "truncated")


def test_a_negative_member_size_is_refused(tmp_path, disks, place):
    """GNU's base-256 size field can hold a negative number: read as such, the member's data never ended and
    the node kept the rest of the upload in memory."""
    descriptor, _disk = _descriptor_and_disk(disks)
    ova = build_ova(tmp_path / "neg.ova", [descriptor])
    data = bytearray(ova.read_bytes())
    data[124:136] = b"\xff" * 11 + b"\xf0"  # -16 in two's complement, base-256
    data[148:156] = b" " * 8
    data[148:156] = f"{sum(data[:512]):06o}\0 ".encode()
    ova.write_bytes(bytes(data))
    _assert_refused(ova, place, "negative size")



def test_a_disk_that_would_fill_the_staging_space_is_refused_before_it_does(tmp_path, tmp_path_factory):
    """gzip'd zeros declared as a disk larger than the staging filesystem (a 320 MiB XFS here), which a pool
    on Ceph could hold: they are refused while some room is left, not written until the node's disk is full."""
    ova = gzipped_zeros_ova(tmp_path, "f", 400 * MiB, 512)
    backend = FileBackend({"storage_directory": str(tmp_path / "storage")})
    backend.pool_create("pool", {})
    with mounted_xfs(tmp_path_factory.mktemp("staging"), 320 * MiB) as staging:
        _assert_refused(ova, LocalVolumes(backend, "pool", staging), "does not fit the node's staging space")
