"""The OVF reader against descriptors in the styles real exporters write, every unit spelling, and refusals."""
from pathlib import Path

import pytest

from pvc import ovf
from pvc.errors import InvalidInput
from ova_support import DiskSpec, ovf2_descriptor, virtualbox_descriptor, vmware_descriptor

GiB, MiB = 1 << 30, 1 << 20
IMAGE = Path(__file__)
"""Any file: the descriptors only need its size."""


def test_vmware_style_descriptor_gives_the_hardware():
    disks = [DiskSpec(IMAGE, 16, "byte * 2^30"), DiskSpec(IMAGE, 2, "byte*2^30", gzip=True),
             DiskSpec(None, 512, "byte * 2^20")]
    appliance = ovf.parse(vmware_descriptor("web01", disks, vcpus=4, memory="2048"))
    assert (appliance.name, appliance.vcpus, appliance.memory_bytes, appliance.firmware) == \
        ("web01", 4, 2 * GiB, "efi")
    assert (appliance.os_id, appliance.os_type, appliance.os_description) == \
        (101, "debian11_64Guest", "Debian GNU/Linux 11 (64-bit)")
    assert [(disk.disk_id, disk.capacity_bytes, disk.bus, disk.image_format) for disk in appliance.disks] == \
        [("vmdisk1", 16 * GiB, "scsi", "vmdk"), ("vmdisk2", 2 * GiB, "scsi", "vmdk"),
         ("vmdisk3", 512 * MiB, "scsi", None)]
    assert appliance.disks[0].file.href == "web01-disk1.vmdk" and appliance.disks[2].file is None
    assert appliance.disks[1].file.compression == "gzip"
    assert [(nic.network, nic.model) for nic in appliance.nics] == [("VM Network", "vmxnet3")]
    assert appliance.networks == ["VM Network"] and appliance.removable == ["cdrom"]


def test_virtualbox_style_descriptor_gives_the_hardware():
    appliance = ovf.parse(virtualbox_descriptor("vbox", [DiskSpec(IMAGE, 10 * GiB)], vcpus=1, memory="512"))
    assert (appliance.vcpus, appliance.memory_bytes, appliance.firmware) == (1, 512 * MiB, "bios")
    assert [(disk.capacity_bytes, disk.bus) for disk in appliance.disks] == [(10 * GiB, "sata")]
    assert [(nic.network, nic.model) for nic in appliance.nics] == [("NAT", "e1000")]
    assert appliance.os_id == 96


def test_ovf2_storage_and_ethernet_port_items():
    appliance = ovf.parse(ovf2_descriptor("two"))
    assert (appliance.vcpus, appliance.memory_bytes) == (4, 2 * GiB)
    assert [(disk.capacity_bytes, disk.bus, disk.file) for disk in appliance.disks] == [(8 * GiB, "nvme", None)]
    assert [(nic.network, nic.model) for nic in appliance.nics] == [("lan", "virtio")]


@pytest.mark.parametrize("units, expected", [
    ("byte * 2^20", MiB), ("byte*2^20", MiB), ("byte* 2^20", MiB), ("MegaBytes", MiB), ("MB", MiB),
    ("MiB", MiB), ("megabytes", MiB), ("byte * 2^30", GiB), ("GigaBytes", GiB), ("GB", GiB),
    ("KiloBytes", 1024), ("byte * 1024", 1024), ("byte * 2^10 * 2^10", MiB), ("byte", 1), ("bytes", 1),
])
def test_memory_in_every_unit_spelling(units, expected):
    appliance = ovf.parse(vmware_descriptor("m", [], memory="3", memory_units=units))
    assert appliance.memory_bytes == 3 * expected


@pytest.mark.parametrize("units, expected", [
    (None, 1), ("byte * 2^30", GiB), ("byte*2^30", GiB), ("byte *2^20", MiB), ("GigaBytes", GiB),
])
def test_capacity_in_every_unit_spelling(units, expected):
    appliance = ovf.parse(vmware_descriptor("c", [DiskSpec(None, 5, units)]))
    assert appliance.disks[0].capacity_bytes == 5 * expected


def test_memory_without_units_is_read_as_mib():
    assert ovf.parse(vmware_descriptor("m", [], memory="256", memory_units=None)).memory_bytes == 256 * MiB


def test_deployment_option_takes_the_default_configurations_items():
    options = """<DeploymentOptionSection><Info>sizes</Info>
      <Configuration ovf:id="small"><Label>Small</Label><Description>s</Description></Configuration>
      <Configuration ovf:id="large" ovf:default="true"><Label>Large</Label><Description>l</Description>
      </Configuration></DeploymentOptionSection>"""
    hardware = """<Item ovf:configuration="large"><rasd:InstanceID>90</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>8</rasd:VirtualQuantity></Item>"""
    descriptor = vmware_descriptor("d", [], vcpus=2, extra_envelope=options, extra_hardware=hardware)
    # the unconditional CPU item comes first in the section: move it under the small configuration
    descriptor = descriptor.replace(b"<Item>\n        <rasd:AllocationUnits>hertz",
                                    b'<Item ovf:configuration="small">\n        <rasd:AllocationUnits>hertz')
    assert ovf.parse(descriptor).vcpus == 8


def test_virtual_system_collection_is_refused_naming_the_vms():
    descriptor = f"""<Envelope xmlns="{ovf.ENVELOPE_NAMESPACES[0]}" xmlns:ovf="{ovf.ENVELOPE_NAMESPACES[0]}">
      <References/><VirtualSystemCollection ovf:id="vApp"><Info>x</Info>
      <VirtualSystem ovf:id="db"><Info>x</Info></VirtualSystem>
      <VirtualSystem ovf:id="web"><Info>x</Info></VirtualSystem></VirtualSystemCollection></Envelope>"""
    with pytest.raises(InvalidInput, match=r"VirtualSystemCollection of 2 VMs \(db, web\)"):
        ovf.parse(descriptor.encode())


@pytest.mark.parametrize("href, message", [
    ("http://evil.example/disk.vmdk", "a URL"), ("file:///etc/shadow", "a URL"),
    ("/etc/shadow", "outside the OVA"), ("../disk.vmdk", "outside the OVA"), ("a/../../b", "outside the OVA"),
])
def test_file_outside_the_archive_is_refused(href, message):
    with pytest.raises(InvalidInput, match=message):
        ovf.parse(vmware_descriptor("h", [DiskSpec(IMAGE, 1, href=href)]))


@pytest.mark.parametrize("descriptor, message", [
    (b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY big 'boom'>]><Envelope>&big;</Envelope>", "DTD or entities"),
    (b'<!DOCTYPE Envelope SYSTEM "http://evil.example/x.dtd"><Envelope/>', "DTD or entities"),
    (b"<Envelope><unclosed></Envelope>", "not well-formed XML"),
    (b"<Envelope xmlns='urn:other'/>", "not an OVF envelope"),
    (b"not xml at all", "not well-formed XML"),
])
def test_hostile_or_broken_xml_is_refused(descriptor, message):
    with pytest.raises(InvalidInput, match=message) as refused:
        ovf.parse(descriptor)
    assert "\n" not in str(refused.value)


def test_oversized_descriptor_is_refused():
    with pytest.raises(InvalidInput, match="more than"):
        ovf.parse(b" " * (ovf.MAX_DESCRIPTOR_BYTES + 1))


@pytest.mark.parametrize("change, message", [
    ((b"<rasd:VirtualQuantity>1024<", b"<rasd:VirtualQuantity>lots<"), "not a whole number"),
    ((b"byte * 2^20</rasd:AllocationUnits>", b"furlongs</rasd:AllocationUnits>"), "unit 'furlongs'"),
    ((b"byte * 2^20</rasd:AllocationUnits>", b"byte * 2^x</rasd:AllocationUnits>"), "not a factor"),
    ((b'ovf:capacity="4"', b'ovf:capacity="${size}"'), "not a whole number"),
    ((b'ovf:capacityAllocationUnits="byte * 2^30"', b'ovf:capacityAllocationUnits="bit * 2^30"'),
     "not a size in bytes"),
    ((b"ovf:/disk/vmdisk1<", b"ovf:/disk/nope<"), "disk 'nope', which the DiskSection does not list"),
    ((b"ovf:/disk/vmdisk1<", b"ovf:/file/file1<"), "a file"),
    ((b'ovf:fileRef="file1"', b'ovf:fileRef="file9"'), "file 'file9', which References does not list"),
    ((b"vmdk.html#streamOptimized", b"iso.html"), "cannot import"),
    ((b'ovf:href="c-disk1.vmdk"', b'ovf:href="c-disk1.vmdk" ovf:compression="bzip2"'), "only gzip"),
    ((b"<rasd:ResourceType>3</rasd:ResourceType>", b"<rasd:ResourceType>33</rasd:ResourceType>"), "no CPU"),
])
def test_bad_values_are_refused_naming_what_is_wrong(change, message):
    descriptor = vmware_descriptor("c", [DiskSpec(IMAGE, 4, "byte * 2^30")])
    assert change[0] in descriptor
    with pytest.raises(InvalidInput, match=message) as refused:
        ovf.parse(descriptor.replace(*change))
    assert "\n" not in str(refused.value)


def test_too_many_disks_are_refused():
    with pytest.raises(InvalidInput, match="65 disks; more than 64"):
        ovf.parse(vmware_descriptor("many", [DiskSpec(None, 1, "MB")] * 65))


def test_the_same_disk_attached_twice_is_refused():
    descriptor = vmware_descriptor("twice", [DiskSpec(None, 1, "MB"), DiskSpec(None, 1, "MB")])
    with pytest.raises(InvalidInput, match="disk 'vmdisk1' is attached twice"):
        ovf.parse(descriptor.replace(b"ovf:/disk/vmdisk2<", b"ovf:/disk/vmdisk1<"))


def test_two_disks_sharing_one_file_are_refused():
    descriptor = vmware_descriptor("share", [DiskSpec(IMAGE, 1, "MB"), DiskSpec(None, 1, "MB")])
    descriptor = descriptor.replace(b'ovf:diskId="vmdisk2"', b'ovf:diskId="vmdisk2" ovf:fileRef="file1"')
    with pytest.raises(InvalidInput, match="disks share the file 'share-disk1.vmdk'"):
        ovf.parse(descriptor)


HUGE_UNITS = ["byte * 2^81", "byte * 10^30", "byte * " + "9" * 30,
              "byte * " + " * ".join(["99999999999999999999^999"] * 400)]


@pytest.mark.parametrize("units", HUGE_UNITS)
def test_a_unit_of_more_than_a_yobibyte_is_refused_before_it_is_computed(units):
    """A unit's factors are bounded before they are multiplied out: 400 factors of a 20-digit base to the 999th
    would have been a number of megabytes, computed while the node's keepalives waited; the error shows only the
    unit's beginning."""
    with pytest.raises(InvalidInput) as refused:
        ovf.parse(vmware_descriptor("u", [DiskSpec(None, 5, units)]))
    assert "\n" not in str(refused.value) and len(str(refused.value)) < 200, str(refused.value)[:300]


@pytest.mark.parametrize("capacity", ["²", "9" * 5000, "-5", "5.5"])
def test_a_capacity_that_is_not_a_whole_number_of_ascii_digits_is_refused_in_one_line(capacity):
    descriptor = vmware_descriptor("n", [DiskSpec(None, 5, "byte * 2^20")])
    assert b'ovf:capacity="5"' in descriptor
    with pytest.raises(InvalidInput, match="not a whole number") as refused:
        ovf.parse(descriptor.replace(b'ovf:capacity="5"', f'ovf:capacity="{capacity}"'.encode()))
    assert "\n" not in str(refused.value) and len(str(refused.value)) < 200


def test_a_disk_section_over_the_limit_is_refused_before_its_disks_are_read():
    """Each disk was checked against every one before it (files shared, disks attached twice) before the count
    was: a 4 MiB descriptor holds some 25,000 disks, tens of seconds of pvcnoded's CPU."""
    with pytest.raises(InvalidInput, match="DiskSection has 2000 disks; more than 64 are refused"):
        ovf.parse(vmware_descriptor("many", [DiskSpec(None, 1, "MB")] * 2000))
