"""OVF descriptors (DMTF DSP0243, OVF 1.x and 2.0) as VMware ovftool/ESXi and VirtualBox write them.

Pure: `parse` takes the descriptor's bytes and returns plain data, or refuses with one `InvalidInput` line
naming what is wrong. The descriptor comes from an uploaded archive, so it is hostile: lxml parses it with no
DTD, no entity expansion, no network and no huge-tree mode, and a descriptor that declares a DTD at all is
refused (OVF has no use for one; entities are how XML attacks start).

Elements and attributes are matched by local name within their section, as exporters disagree on namespace
prefixes and versions; the root must be an OVF envelope. Units follow the DMTF programmatic-unit grammar
(DSP0004: ``byte * 2^20``, spaces optional) plus the CIM names exporters also write (``MegaBytes``, ``MB``):
memory is never assumed to be in MiB when a unit is given, and a unit PVC cannot read is refused.
"""
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from lxml import etree

from pvc.errors import InvalidInput

MAX_DESCRIPTOR_BYTES = 4 << 20
MAX_DISKS = 64
MAX_UNIT_BITS = 80
"""A unit of more than 2^80 bytes (a yobibyte) is no disk's."""
"""More disks than any VM has: a bound on what one descriptor can make a node create."""
ENVELOPE_NAMESPACES = ("http://schemas.dmtf.org/ovf/envelope/1", "http://schemas.dmtf.org/ovf/envelope/2")
VMWARE_NAMESPACE = "http://www.vmware.com/schema/ovf"

CPU, MEMORY, IDE, SCSI, OTHER_STORAGE, NIC, FLOPPY, CD, DVD, DISK = 3, 4, 5, 6, 20, 10, 14, 15, 16, 17
REMOVABLE = {FLOPPY: "floppy", CD: "cdrom", DVD: "dvd"}
STORAGE_SUBTYPE_BUS = {"ahci": "sata", "vmware.sata.ahci": "sata", "vmware.nvme.controller": "nvme",
                       "nvme": "nvme", "virtio": "virtio", "virtio-scsi": "scsi"}
DEFAULT_DISK_BUS = "sata"
"""A disk on no known controller: SATA, which every guest OS of the last decade can boot from."""
NIC_MODELS = {"e1000": "e1000", "e1000e": "e1000e", "vmxnet3": "vmxnet3", "pcnet32": "pcnet", "pcnet": "pcnet",
              "am79c970a": "pcnet", "am79c973": "pcnet", "virtio": "virtio", "rtl8139": "rtl8139"}
DEFAULT_NIC_MODEL = "e1000"
"""What an unnamed or unknown adapter becomes: every guest has a driver for it."""
DISK_FORMATS = (("vmdk", "vmdk"), ("qcow", "qcow2"), ("vhdx", "vhdx"), ("vhd", "vpc"), ("vdi", "vdi"))
"""Fragments of an `ovf:format` URI and the image format they name, first match wins."""

_NAMED_UNITS = {
    "b": 0, "byte": 0, "bytes": 0,
    "kb": 10, "kib": 10, "kilobyte": 10, "kilobytes": 10,
    "mb": 20, "mib": 20, "megabyte": 20, "megabytes": 20,
    "gb": 30, "gib": 30, "gigabyte": 30, "gigabytes": 30,
    "tb": 40, "tib": 40, "terabyte": 40, "terabytes": 40,
}
"""CIM's older names, which exporters write for memory (``MegaBytes``) and mean as powers of 1024."""
_FACTOR = re.compile(r"(\d+)(?:\^(\d+))?")
_DISK_REFERENCE = re.compile(r"(?:ovf:)?/disk/(.+)")
_FILE_REFERENCE = re.compile(r"(?:ovf:)?/file/(.+)")


@dataclass(frozen=True)
class OvfFile:
    """A file the descriptor references: one member of the archive, or `chunk_size`-byte numbered parts."""

    file_id: str
    href: str
    size_bytes: int | None
    compression: str | None
    chunk_size_bytes: int | None

    def member_names(self, count: int) -> list[str]:
        """The archive members holding the file: its href, or its first `count` parts when chunked."""
        if self.chunk_size_bytes is None:
            return [self.href]
        return [f"{self.href}.{index:09d}" for index in range(count)]


@dataclass(frozen=True)
class OvfDisk:
    """A virtual disk: its capacity, where its image comes from (None: a blank disk) and how it is attached."""

    disk_id: str
    capacity_bytes: int
    file: OvfFile | None
    image_format: str | None
    bus: str
    address: str | None = None


@dataclass(frozen=True)
class OvfNic:
    name: str
    network: str | None
    model: str
    subtype: str | None


@dataclass(frozen=True)
class Appliance:
    """One virtual machine as the descriptor describes it."""

    name: str
    os_id: int | None
    os_type: str | None
    os_description: str | None
    vcpus: int
    memory_bytes: int
    firmware: str
    disks: list[OvfDisk]
    nics: list[OvfNic]
    files: list[OvfFile]
    networks: list[str] = field(default_factory=list)
    removable: list[str] = field(default_factory=list)

    def hardware(self) -> dict:
        """The appliance as plain data (what a record stores and ``ova info`` shows)."""
        return {
            "name": self.name, "os_id": self.os_id, "os_type": self.os_type, "os_description": self.os_description,
            "vcpus": self.vcpus, "memory_bytes": self.memory_bytes, "firmware": self.firmware,
            "disks": [{"disk_id": disk.disk_id, "capacity_bytes": disk.capacity_bytes, "bus": disk.bus,
                       "file": disk.file.href if disk.file else None, "image_format": disk.image_format}
                      for disk in self.disks],
            "nics": [{"name": nic.name, "network": nic.network, "model": nic.model} for nic in self.nics],
            "networks": list(self.networks), "removable": list(self.removable),
        }


def parse(data: bytes) -> Appliance:
    """The appliance described by the OVF descriptor `data`."""
    envelope = _envelope(data)
    files = _references(envelope)
    disks = _disk_section(envelope, files)
    system = _virtual_system(envelope)
    items = _hardware_items(envelope, system)
    return _appliance(envelope, system, items, disks, files)


def parse_units(text: str | None, what: str, default: str | None = None) -> int:
    """The number of bytes one unit of `text` is: ``byte * 2^20`` (spaces optional, factors multiplied),
    ``byte * 1024``, or a CIM name (``MegaBytes``, ``MB``, ``GiB``). `default` applies when `text` is absent."""
    spelling = (text or "").strip() or default
    if spelling is None:
        raise InvalidInput(f"{what} gives no unit")
    named = _NAMED_UNITS.get(spelling.lower())
    if named is not None:
        return 1 << named
    base, *factors = [part.strip() for part in spelling.split("*")]
    if base.lower() not in ("byte", "bytes") or not factors:
        raise InvalidInput(f"{what} has the unit {_shown(spelling)}, which is not a size in bytes PVC can read "
                           "(such as 'byte * 2^20' or 'MegaBytes')")
    multiplier = 1
    for factor in factors:
        match = _FACTOR.fullmatch(factor.replace(" ", ""))
        if not match or len(match.group(1)) > 20 or (match.group(2) and len(match.group(2)) > 3):
            raise InvalidInput(f"{what} has the unit {_shown(spelling)}: {_shown(factor)} is not a factor like "
                               "2^20 or 1024")
        base, exponent = int(match.group(1)), int(match.group(2) or 1)
        # At least this many bits, known before the power is computed: a descriptor's 4 MiB of factors had
        # multiplied into gigabytes of digits.
        if multiplier.bit_length() - 1 + (base.bit_length() - 1) * exponent > MAX_UNIT_BITS:
            raise InvalidInput(f"{what} has the unit {_shown(spelling)}, more than 2^{MAX_UNIT_BITS} bytes")
        multiplier *= base ** exponent
    if multiplier.bit_length() - 1 > MAX_UNIT_BITS:
        raise InvalidInput(f"{what} has the unit {_shown(spelling)}, more than 2^{MAX_UNIT_BITS} bytes")
    return multiplier


def _shown(text: str) -> str:
    """A piece of the descriptor for an error's one line: at most 60 characters of it."""
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _envelope(data: bytes) -> etree._Element:
    if len(data) > MAX_DESCRIPTOR_BYTES:
        raise InvalidInput(f"the OVF descriptor is {len(data)} bytes; more than {MAX_DESCRIPTOR_BYTES} is refused")
    if re.search(rb"<!(DOCTYPE|ENTITY)", data, re.IGNORECASE):
        raise InvalidInput("the OVF descriptor declares a DTD or entities; refused")
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
                             huge_tree=False, remove_comments=True, remove_pis=True)
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as error:
        raise InvalidInput(f"the OVF descriptor is not well-formed XML: {error}") from None
    docinfo = root.getroottree().docinfo
    if docinfo.internalDTD is not None or docinfo.doctype:
        raise InvalidInput("the OVF descriptor declares a DTD or entities; refused")
    if etree.QName(root).namespace not in ENVELOPE_NAMESPACES or etree.QName(root).localname != "Envelope":
        raise InvalidInput(f"the descriptor is not an OVF envelope (its root is {root.tag!r})")
    return root


def _local(element: etree._Element) -> str:
    return etree.QName(element).localname if isinstance(element.tag, str) else ""


def _children(element: etree._Element, name: str) -> list[etree._Element]:
    return [child for child in element if _local(child) == name]


def _child(element: etree._Element, name: str) -> etree._Element | None:
    found = _children(element, name)
    return found[0] if found else None


def _text(element: etree._Element, name: str) -> str | None:
    child = _child(element, name)
    if child is None or child.text is None:
        return None
    return child.text.strip()


def _attribute(element: etree._Element, name: str) -> str | None:
    """The attribute of that local name, in the OVF namespace or none (exporters write ``ovf:`` prefixes)."""
    for key, value in element.attrib.items():
        qualified = etree.QName(key)
        if qualified.localname == name and qualified.namespace in (None, *ENVELOPE_NAMESPACES):
            return value
    return None


def _integer(text: str | None, what: str) -> int:
    """A whole number of ASCII digits, at most 20 of them (``isdigit`` alone let '²' through, and Python's
    int refuses more than 4300 digits with a ValueError, not a refusal naming the field)."""
    digits = (text or "").strip()
    if not digits.isascii() or not digits.isdigit() or len(digits) > 20:
        raise InvalidInput(f"{what} is {_shown(text or '')}, not a whole number")
    return int(digits)


def _references(envelope: etree._Element) -> dict[str, OvfFile]:
    files: dict[str, OvfFile] = {}
    references = _child(envelope, "References")
    for element in _children(references, "File") if references is not None else []:
        file_id = _attribute(element, "id")
        href = _attribute(element, "href")
        if not file_id or not href:
            raise InvalidInput("a File in the descriptor's References lacks its id or href")
        _check_href(file_id, href)
        compression = _attribute(element, "compression")
        if compression not in (None, "", "identity", "gzip"):
            raise InvalidInput(f"file '{href}' uses compression {compression!r}; only gzip is supported")
        size = _attribute(element, "size")
        chunk = _attribute(element, "chunkSize")
        files[file_id] = OvfFile(file_id, href, _integer(size, f"the size of file '{href}'") if size else None,
                                 "gzip" if compression == "gzip" else None,
                                 _integer(chunk, f"the chunkSize of file '{href}'") or None if chunk else None)
    return files


def _check_href(file_id: str, href: str) -> None:
    """A referenced file must be a member of the archive: never a URL to fetch, never a path out of it."""
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", href):
        raise InvalidInput(f"file '{file_id}' refers to {href!r}, a URL; only files inside the OVA are read, "
                           "nothing is fetched")
    path = PurePosixPath(href)
    if path.is_absolute() or ".." in path.parts or "\\" in href or not path.parts or "\0" in href:
        raise InvalidInput(f"file '{file_id}' refers to {href!r}, a path outside the OVA")


def _disk_section(envelope: etree._Element, files: dict[str, OvfFile]) -> dict[str, dict]:
    """Disk id → capacity, file and format; the bus comes later, from the hardware that attaches it."""
    disks: dict[str, dict] = {}
    used_files: set[str] = set()
    elements = [element for section in _children(envelope, "DiskSection") for element in _children(section, "Disk")]
    if len(elements) > MAX_DISKS:
        raise InvalidInput(f"the descriptor's DiskSection has {len(elements)} disks; more than {MAX_DISKS} are "
                           "refused")
    for element in elements:
        disk_id = _attribute(element, "diskId")
        if not disk_id:
            raise InvalidInput("a Disk in the descriptor's DiskSection lacks its diskId")
        what = f"the capacity of disk '{disk_id}'"
        capacity = _integer(_attribute(element, "capacity"), what) * parse_units(
            _attribute(element, "capacityAllocationUnits"), what, default="byte")
        if capacity <= 0:
            raise InvalidInput(f"{what} is zero")
        file_ref = _attribute(element, "fileRef")
        if file_ref and file_ref not in files:
            raise InvalidInput(f"disk '{disk_id}' names the file '{file_ref}', which References does not list")
        file = files[file_ref] if file_ref else None
        if file is not None and file.file_id in used_files:
            raise InvalidInput(f"disks share the file '{file.href}'; each disk needs its own")
        if file is not None:
            used_files.add(file.file_id)
        disks[disk_id] = {"capacity": capacity, "file": file,
                          "format": _disk_format(disk_id, _attribute(element, "format")) if file else None}
    return disks


def _disk_format(disk_id: str, uri: str | None) -> str:
    for fragment, image_format in DISK_FORMATS:
        if fragment in (uri or "").lower():
            return image_format
    raise InvalidInput(f"disk '{disk_id}' has the format {uri!r}, which PVC cannot import (use a VMDK, QCOW2, "
                       "VHD(X) or VDI image)")


def _virtual_system(envelope: etree._Element) -> etree._Element:
    system = _child(envelope, "VirtualSystem")
    if system is not None:
        return system
    collection = _child(envelope, "VirtualSystemCollection")
    if collection is None:
        raise InvalidInput("the descriptor describes no VirtualSystem")
    systems = collection.iter(*(f"{{{namespace}}}VirtualSystem" for namespace in ENVELOPE_NAMESPACES))
    systems = list(systems)
    if len(systems) != 1:
        names = ", ".join(_system_name(each) for each in systems) or "none"
        raise InvalidInput(f"the OVA holds a VirtualSystemCollection of {len(systems)} VMs ({names}); PVC imports "
                           "one VM per OVA")
    return systems[0]


def _system_name(system: etree._Element) -> str:
    return _text(system, "Name") or _attribute(system, "id") or "unnamed"


def _hardware_items(envelope: etree._Element, system: etree._Element) -> list[etree._Element]:
    """The hardware section's items that apply: with a DeploymentOptionSection, those of no configuration
    or of the default one (the one marked default, else the first)."""
    section = _child(system, "VirtualHardwareSection")
    if section is None:
        raise InvalidInput(f"VirtualSystem '{_system_name(system)}' has no VirtualHardwareSection")
    configuration = _default_configuration(envelope)
    items = []
    for element in section:
        if _local(element) not in ("Item", "StorageItem", "EthernetPortItem"):
            continue
        wanted = _attribute(element, "configuration")
        if wanted and configuration is not None and configuration not in wanted.split():
            continue
        items.append(element)
    return items


def _default_configuration(envelope: etree._Element) -> str | None:
    section = _child(envelope, "DeploymentOptionSection")
    configurations = _children(section, "Configuration") if section is not None else []
    for configuration in configurations:
        if (_attribute(configuration, "default") or "").lower() in ("true", "1"):
            return _attribute(configuration, "id")
    return _attribute(configurations[0], "id") if configurations else None


def _appliance(envelope: etree._Element, system: etree._Element, items: list[etree._Element],
               disk_section: dict[str, dict], files: dict[str, OvfFile]) -> Appliance:
    name = _system_name(system)
    by_type: dict[int, list[etree._Element]] = {}
    for item in items:
        by_type.setdefault(_integer(_text(item, "ResourceType"), "an Item's ResourceType"), []).append(item)
    controllers = {_text(item, "InstanceID"): _controller_bus(kind, item)
                   for kind in (IDE, SCSI, OTHER_STORAGE) for item in by_type.get(kind, [])}
    disks, attached = [], set()
    for item in by_type.get(DISK, []):
        disk = _attached_disk(item, disk_section, controllers)
        if disk.disk_id in attached:
            raise InvalidInput(f"disk '{disk.disk_id}' is attached twice in VirtualSystem '{name}'")
        disks.append(disk)
        attached.add(disk.disk_id)
    for disk_id, facts in disk_section.items():
        if disk_id not in attached:
            disks.append(OvfDisk(disk_id, facts["capacity"], facts["file"], facts["format"], DEFAULT_DISK_BUS))
    if len(disks) > MAX_DISKS:
        raise InvalidInput(f"VirtualSystem '{name}' has {len(disks)} disks; more than {MAX_DISKS} are refused")
    os_section = _child(system, "OperatingSystemSection")
    os_id = _attribute(os_section, "id") if os_section is not None else None
    return Appliance(
        name=name,
        os_id=int(os_id) if os_id and os_id.isdigit() else None,
        os_type=_os_type(os_section),
        os_description=_text(os_section, "Description") if os_section is not None else None,
        vcpus=_vcpus(by_type.get(CPU, []), name),
        memory_bytes=_memory(by_type.get(MEMORY, []), name),
        firmware=_firmware(system),
        disks=disks,
        nics=[_nic(item) for item in by_type.get(NIC, [])],
        files=list(files.values()),
        networks=_networks(envelope),
        removable=[REMOVABLE[kind] for kind in (FLOPPY, CD, DVD) for _item in by_type.get(kind, [])],
    )


def _controller_bus(kind: int, item: etree._Element) -> str:
    if kind == IDE:
        return "ide"
    if kind == SCSI:
        return "scsi"
    return STORAGE_SUBTYPE_BUS.get((_text(item, "ResourceSubType") or "").lower(), DEFAULT_DISK_BUS)


def _attached_disk(item: etree._Element, disk_section: dict[str, dict],
                   controllers: dict[str | None, str]) -> OvfDisk:
    host_resource = _text(item, "HostResource") or ""
    reference = _DISK_REFERENCE.fullmatch(host_resource)
    if reference is None:
        if _FILE_REFERENCE.fullmatch(host_resource):
            raise InvalidInput(f"a disk item refers to {host_resource!r}, a file; PVC reads disks described in "
                               "the DiskSection (ovf:/disk/ID)")
        raise InvalidInput(f"a disk item's HostResource is {host_resource!r}, not ovf:/disk/ID")
    disk_id = reference.group(1)
    facts = disk_section.get(disk_id)
    if facts is None:
        raise InvalidInput(f"a disk item refers to disk '{disk_id}', which the DiskSection does not list")
    parent = _text(item, "Parent")
    bus = controllers.get(parent, DEFAULT_DISK_BUS) if parent else DEFAULT_DISK_BUS
    return OvfDisk(disk_id, facts["capacity"], facts["file"], facts["format"], bus, _text(item, "AddressOnParent"))


def _vcpus(items: list[etree._Element], name: str) -> int:
    if not items:
        raise InvalidInput(f"VirtualSystem '{name}' declares no CPU (ResourceType 3)")
    vcpus = _integer(_text(items[0], "VirtualQuantity"), f"the CPU count of '{name}'")
    if vcpus <= 0:
        raise InvalidInput(f"the CPU count of '{name}' is zero")
    return vcpus


def _memory(items: list[etree._Element], name: str) -> int:
    """Memory in bytes: VirtualQuantity in its AllocationUnits (MiB when none is given, as every exporter
    that leaves it out means)."""
    if not items:
        raise InvalidInput(f"VirtualSystem '{name}' declares no memory (ResourceType 4)")
    what = f"the memory of '{name}'"
    memory = _integer(_text(items[0], "VirtualQuantity"), what) * parse_units(
        _text(items[0], "AllocationUnits"), what, default="byte * 2^20")
    if memory <= 0:
        raise InvalidInput(f"{what} is zero")
    return memory


def _nic(item: etree._Element) -> OvfNic:
    subtype = _text(item, "ResourceSubType")
    return OvfNic(_text(item, "ElementName") or _text(item, "InstanceID") or "nic", _text(item, "Connection"),
                  NIC_MODELS.get((subtype or "").lower(), DEFAULT_NIC_MODEL), subtype)


def _firmware(system: etree._Element) -> str:
    """``efi`` when VMware's ``vmw:Config firmware`` or VirtualBox's machine section says so, else ``bios``."""
    for element in system.iter():
        if _local(element) == "Config" and etree.QName(element).namespace == VMWARE_NAMESPACE:
            values = {etree.QName(key).localname: value for key, value in element.attrib.items()}
            if values.get("key") == "firmware":
                return "efi" if values.get("value", "").lower().startswith("efi") else "bios"
        if _local(element) == "Firmware" and (element.get("type") or "").lower().startswith("efi"):
            return "efi"
    return "bios"


def _os_type(os_section: etree._Element | None) -> str | None:
    if os_section is None:
        return None
    for key, value in os_section.attrib.items():
        if etree.QName(key).localname == "osType":
            return value
    return None


def _networks(envelope: etree._Element) -> list[str]:
    section = _child(envelope, "NetworkSection")
    return [_attribute(network, "name") or "" for network in _children(section, "Network")] \
        if section is not None else []
