"""The built-in appliance importer ``ova``: an OVA read as a stream (`pvc.ova_archive`), its descriptor parsed
before any disk arrives (`pvc.ovf`), each disk image checked and converted by qemu-img as the ``qemu-img``
image importer does (format from its magic bytes, self-contained, no larger than the disk it claims to be)."""
from pathlib import Path
from typing import Any, BinaryIO

import pvc
from pvc import ova_archive, ovf
from pvc.errors import InvalidInput
from pvc.hookspecs import ApplianceResult, ApplianceVolumes
from pvc.qemu_img import QemuImg, check_header, check_self_contained, detect_format, virtual_size

HEAD_BYTES = 64 << 10


class OvaImporter:
    description = "OVA appliances (OVF 1.x/2.0 as VMware and VirtualBox export them), disks converted by qemu-img"

    def import_appliance(self, source: BinaryIO, size_bytes: int, volumes: ApplianceVolumes,
                         qemu_img: QemuImg) -> ApplianceResult:
        written: dict[int, dict[str, Any]] = {}
        indexes: dict[str, int] = {}

        def on_descriptor(appliance: ovf.Appliance) -> None:
            indexes.update({disk.disk_id: index for index, disk in enumerate(appliance.disks)})
            hardware = appliance.hardware()
            volumes.check_hardware(hardware.get("vcpus") or 0, hardware.get("memory_bytes") or 0)
            volumes.check_room(sum(disk.capacity_bytes for disk in appliance.disks))
            for index, disk in enumerate(appliance.disks):
                if disk.file is None:
                    volumes.create(index, disk.capacity_bytes)
                    written[index] = {"index": index, "size_bytes": disk.capacity_bytes, "source": None,
                                      "image_format": None}

        def import_disk(disk: ovf.OvfDisk, staged: Path) -> None:
            index = indexes[disk.disk_id]
            import_disk_image(disk, staged, volumes, index, qemu_img)
            written[index] = {"index": index, "size_bytes": disk.capacity_bytes, "source": disk.file.href,
                              "image_format": disk.image_format}

        contents = ova_archive.read_ova(source, size_bytes, volumes.staging_directory, on_descriptor, import_disk)
        return ApplianceResult(
            volumes=[written[index] for index in sorted(written)],
            hardware=contents.appliance.hardware(),
            details={"manifest": contents.manifest, "unverified_files": contents.unverified_files,
                     "certificate": contents.certificate,
                     "skipped_files": contents.skipped_files})


def import_disk_image(disk: ovf.OvfDisk, staged: Path, volumes: ApplianceVolumes, index: int,
                      qemu_img: QemuImg) -> None:
    """Convert one staged disk image into volume `index`, `disk.capacity_bytes` long, after refusing an image
    that is not of its declared format, names other files, or is larger than the disk it claims to be."""
    what = f"disk '{disk.disk_id}' ({disk.file.href})"
    with open(staged, "rb") as file:
        head = file.read(HEAD_BYTES)
    detected = detect_format(head)
    if detected != disk.image_format:
        raise InvalidInput(f"{what} is declared {disk.image_format} but its content is {detected}")
    try:
        check_header(disk.image_format, head)
        info = qemu_img.info(str(staged), disk.image_format)
        check_self_contained(info)
        size = virtual_size(info)
        if size > disk.capacity_bytes:
            raise InvalidInput(f"holds an image of {size} bytes, more than its declared capacity of "
                               f"{disk.capacity_bytes} bytes")
        target = volumes.target(index)
        qemu_img.convert(str(staged), disk.image_format, target.qemu_name, size, target.qemu_env)
    except InvalidInput as error:
        raise InvalidInput(f"{what}: {error}") from None
    if size < disk.capacity_bytes:
        volumes.resize(index, disk.capacity_bytes)


@pvc.hookimpl
def pvc_appliance_importers():
    return {"ova": OvaImporter()}
