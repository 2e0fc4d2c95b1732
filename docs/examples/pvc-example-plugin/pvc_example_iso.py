"""An example image importer, ``example-iso``: ISO 9660 images (installer and tool CDs), uploaded with
``--format iso`` into a volume a VM attaches as its CD-ROM.

An image importer keeps three promises (`pvc.hookspecs.ImageImporter`): it writes exactly the raw bytes of
the volume, `size_bytes` long; it treats every upload as hostile, refusing anything that is not what its
format says in one line (`pvc.errors.InvalidInput`); and it never cleans up: PVC removes the volume of a
failed import. A format no built-in importer claims is never detected from the data: the upload names it,
and PVC has already refused data that a known image format's magic claims (a qcow2 file named an ISO).

An ISO is raw data, so this importer streams (``needs_seekable_source = False``): it holds back only the
first 17 sectors, until the primary volume descriptor at sector 16 proves the image is ISO 9660, then writes
each piece as it arrives.
"""
from typing import Iterable

import pvc
from pvc.errors import InvalidInput
from pvc.hookspecs import VolumeTarget

SECTOR = 2048
DESCRIPTOR_SECTOR = 16
"""Sectors 0-15 are the system area; the volume descriptors start at sector 16."""
PRIMARY_DESCRIPTOR = b"\x01CD001\x01"
"""Type 1 (primary volume descriptor), the standard identifier, version 1."""
HELD_BYTES = (DESCRIPTOR_SECTOR + 1) * SECTOR


class IsoImporter:
    description = "ISO 9660 images (--format iso), checked and written as they arrive"
    formats = ("iso",)
    needs_seekable_source = False

    def inspect(self, source_path: str, image_format: str, qemu_img) -> int:
        raise NotImplementedError("a streamed importer is never asked to inspect")

    def import_image(self, source: str | Iterable[bytes], size_bytes: int, image_format: str,
                     target: VolumeTarget, qemu_img) -> None:
        if size_bytes < HELD_BYTES or size_bytes % SECTOR:
            raise InvalidInput(f"example-iso: an ISO 9660 image is whole {SECTOR}-byte sectors, at least "
                               f"{DESCRIPTOR_SECTOR + 1} of them; this upload is {size_bytes} bytes")
        chunks = iter(source)
        held = bytearray()
        while len(held) < HELD_BYTES:
            held += next(chunks)
        descriptor = held[DESCRIPTOR_SECTOR * SECTOR:][:len(PRIMARY_DESCRIPTOR)]
        if descriptor != PRIMARY_DESCRIPTOR:
            raise InvalidInput(f"example-iso: not an ISO 9660 image (no primary volume descriptor at sector "
                               f"{DESCRIPTOR_SECTOR})")
        with target.raw_writer(size_bytes) as writer:
            writer.write(held)
            for chunk in chunks:
                writer.write(chunk)


@pvc.hookimpl
def pvc_image_importers():
    return {"example-iso": IsoImporter()}
