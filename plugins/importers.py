"""The built-in image importers: ``raw`` streams bytes straight into the volume; ``qemu-img`` converts every
other format qemu-img reads, from a staged copy, after refusing images that name other files."""
from typing import Iterable

import pvc
from pvc.hookspecs import VolumeTarget
from pvc.qemu_img import QemuImg, check_self_contained, virtual_size


class RawImporter:
    description = "raw disk images, written into the volume as they arrive"
    formats = ("raw",)
    needs_seekable_source = False

    def inspect(self, source_path: str, image_format: str, qemu_img: QemuImg) -> int:
        return virtual_size(qemu_img.info(source_path, "raw"))

    def import_image(self, source: str | Iterable[bytes], size_bytes: int, image_format: str,
                     target: VolumeTarget, qemu_img: QemuImg) -> None:
        """Chunks go straight into the volume, `size_bytes` (the upload's true length) long. Never staged: the
        format is known from the first bytes, and a staged file reaches qemu-img over NBD padded to 512 bytes."""
        with target.raw_writer(size_bytes) as writer:
            for chunk in source:
                writer.write(chunk)


class QemuImgImporter:
    description = "qcow2, vmdk, vdi, vhdx, vpc and qed images, converted by qemu-img"
    formats = ("qcow2", "vmdk", "vdi", "vhdx", "vpc", "qed")
    needs_seekable_source = True

    def inspect(self, source_path: str, image_format: str, qemu_img: QemuImg) -> int:
        info = qemu_img.info(source_path, image_format)
        check_self_contained(info)
        return virtual_size(info)

    def import_image(self, source: str | Iterable[bytes], size_bytes: int, image_format: str,
                     target: VolumeTarget, qemu_img: QemuImg) -> None:
        qemu_img.convert(str(source), image_format, target.qemu_name, size_bytes, target.qemu_env)


@pvc.hookimpl
def pvc_image_importers():
    return {"raw": RawImporter(), "qemu-img": QemuImgImporter()}
