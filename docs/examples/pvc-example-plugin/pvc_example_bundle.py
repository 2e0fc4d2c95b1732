"""An example appliance importer, ``example-bundle``: a tar archive whose first member is ``bundle.json``
(``{"vcpus": 1, "memory_mib": 256, "disks": [SIZE_BYTES, ...]}``), followed by each disk's raw data as
``disk0.raw``, ``disk1.raw``, ... in order.

An appliance importer must keep four promises (`pvc.hookspecs.ApplianceImporter`): it reads the archive once,
in order, with bounded memory (the upload arrives as a stream that cannot seek); it treats every archive as
hostile, refusing anything unexpected in one line (`pvc.errors.InvalidInput`) before writing it; it checks the
pool has room (`volumes.check_room`) before writing any disk; and it never cleans up: PVC removes the volumes
of a failed import.
"""
import json
import tarfile

import pvc
from pvc.errors import InvalidInput
from pvc.hookspecs import ApplianceResult
from pvc.tar_stream import TarStream

DESCRIPTOR = "bundle.json"
MAX_DESCRIPTOR_BYTES = 64 << 10
MAX_DISKS = 16
REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE)


def _descriptor(archive: TarStream) -> dict:
    first = next(iter(archive), None)
    if first is None or first.name != DESCRIPTOR or first.type not in REGULAR:
        raise InvalidInput(f"example-bundle: the first member must be {DESCRIPTOR}")
    if first.size > MAX_DESCRIPTOR_BYTES:
        raise InvalidInput(f"example-bundle: {DESCRIPTOR} is larger than {MAX_DESCRIPTOR_BYTES} bytes")
    text = b"".join(iter(archive.read, b""))
    try:
        bundle = json.loads(text)
    except ValueError as error:
        raise InvalidInput(f"example-bundle: {DESCRIPTOR} is not JSON: {error}") from None
    disks = bundle.get("disks") if isinstance(bundle, dict) else None
    if not (isinstance(disks, list) and 0 < len(disks) <= MAX_DISKS
            and all(isinstance(size, int) and not isinstance(size, bool) and size > 0 for size in disks)):
        raise InvalidInput(f"example-bundle: {DESCRIPTOR} must list 1 to {MAX_DISKS} disk sizes in bytes")
    for key in ("vcpus", "memory_mib"):
        if not (isinstance(bundle.get(key), int) and not isinstance(bundle.get(key), bool) and bundle[key] > 0):
            raise InvalidInput(f"example-bundle: {DESCRIPTOR} needs a positive whole {key}")
    return bundle


class ExampleBundleImporter:
    description = "example: a tar of bundle.json and raw disks"

    def import_appliance(self, source, size_bytes, volumes, qemu_img):
        archive = TarStream(source)
        bundle = _descriptor(archive)
        sizes = bundle["disks"]
        volumes.check_room(sum(sizes))
        written = []
        for index, member in enumerate(archive):
            expected = f"disk{index}.raw"
            if index >= len(sizes) or member.name != expected or member.type not in REGULAR:
                raise InvalidInput(f"example-bundle: unexpected member {member.name!r} (expected {expected} "
                                   f"of {len(sizes)} disks)")
            if member.size > sizes[index]:
                raise InvalidInput(f"example-bundle: {expected} holds {member.size} bytes, more than its declared "
                                   f"{sizes[index]}")
            with volumes.target(index).raw_writer(sizes[index]) as writer:
                for chunk in iter(archive.read, b""):
                    writer.write(chunk)
            written.append({"index": index, "size_bytes": sizes[index], "source": expected, "image_format": "raw"})
        if len(written) != len(sizes):
            raise InvalidInput(f"example-bundle: {len(sizes)} disks declared, {len(written)} in the archive")
        hardware = {"vcpus": bundle["vcpus"], "memory_bytes": bundle["memory_mib"] << 20, "firmware": "bios",
                    "disks": [{"capacity_bytes": size, "bus": "virtio"} for size in sizes], "nics": []}
        return ApplianceResult(volumes=written, hardware=hardware, details={"manifest": "none"})


@pvc.hookimpl
def pvc_appliance_importers():
    return {"example-bundle": ExampleBundleImporter()}
