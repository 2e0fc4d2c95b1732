"""Domain XML for a VM the provisioner makes, built with lxml from its parts.

The document uses only what `pvc.domain_xml.ALLOWLIST` allows, so it is stored exactly as built: disks name PVC
volumes (``<disk type='volume'>``), consoles are ptys, VNC listens where the node's libvirt listens, and EFI
firmware is asked for by name (the node provides it).
"""
from dataclasses import dataclass

from lxml import etree

DOMAIN_TYPE = "kvm"
BUSES = ("virtio", "scsi", "sata", "ide")
_TARGET_PREFIX = {"virtio": "vd", "scsi": "sd", "sata": "sd", "ide": "hd"}


@dataclass(frozen=True)
class Disk:
    pool: str
    volume: str
    bus: str = "virtio"
    device: str = "disk"


@dataclass(frozen=True)
class Nic:
    mac: str
    model: str
    bridge: str | None = None
    network: str | None = None


@dataclass(frozen=True)
class Hardware:
    vcpus: int
    memory_mib: int
    firmware: str = "bios"
    serial: bool = True
    vnc: bool = False
    vnc_bind: str | None = None
    """The address VNC listens on (loopback or every address); None: the node's libvirt default."""


def build(name: str, uuid: str, hardware: Hardware, disks: list[Disk], nics: list[Nic]) -> str:
    """The domain document of VM `name`; disks boot in the order given."""
    root = etree.Element("domain", type=DOMAIN_TYPE)
    etree.SubElement(root, "name").text = name
    etree.SubElement(root, "uuid").text = uuid
    etree.SubElement(root, "memory", unit="MiB").text = str(hardware.memory_mib)
    etree.SubElement(root, "vcpu").text = str(hardware.vcpus)
    os_element = etree.SubElement(root, "os")
    if hardware.firmware == "efi":
        os_element.set("firmware", "efi")
    etree.SubElement(os_element, "type").text = "hvm"
    features = etree.SubElement(root, "features")
    etree.SubElement(features, "acpi")
    etree.SubElement(features, "apic")
    etree.SubElement(root, "clock", offset="utc")
    for event, action in (("on_poweroff", "destroy"), ("on_reboot", "restart"), ("on_crash", "restart")):
        etree.SubElement(root, event).text = action
    devices = etree.SubElement(root, "devices")
    _add_disks(devices, disks)
    for nic in nics:
        _add_nic(devices, nic)
    if hardware.serial:
        serial = etree.SubElement(devices, "serial", type="pty")
        etree.SubElement(serial, "target", port="0")
        console = etree.SubElement(devices, "console", type="pty")
        etree.SubElement(console, "target", type="serial", port="0")
    if hardware.vnc:
        graphics = etree.SubElement(devices, "graphics", type="vnc", autoport="yes", port="-1")
        if hardware.vnc_bind:
            graphics.set("listen", hardware.vnc_bind)
        video = etree.SubElement(devices, "video")
        etree.SubElement(video, "model", type="virtio", heads="1")
        etree.SubElement(devices, "input", type="tablet", bus="usb")
    return etree.tostring(root, encoding="unicode")


def _add_disks(devices: etree._Element, disks: list[Disk]) -> None:
    used: dict[str, int] = {}
    for order, disk in enumerate(disks, start=1):
        prefix = _TARGET_PREFIX[disk.bus]
        index = used.get(prefix, 0)
        used[prefix] = index + 1
        element = etree.SubElement(devices, "disk", type="volume", device=disk.device)
        etree.SubElement(element, "driver", name="qemu", type="raw")
        etree.SubElement(element, "source", pool=disk.pool, volume=disk.volume)
        etree.SubElement(element, "target", dev=prefix + _letters(index), bus=disk.bus)
        if disk.device == "cdrom":
            etree.SubElement(element, "readonly")
        else:
            etree.SubElement(element, "boot", order=str(order))
    if any(disk.bus == "scsi" for disk in disks):
        etree.SubElement(devices, "controller", type="scsi", index="0", model="virtio-scsi")


def _letters(index: int) -> str:
    """Disk target suffixes as Linux names them: a..z, then aa, ab, ..."""
    letters = ""
    index += 1
    while index:
        index, remainder = divmod(index - 1, 26)
        letters = chr(ord("a") + remainder) + letters
    return letters


def _add_nic(devices: etree._Element, nic: Nic) -> None:
    kind = "bridge" if nic.bridge else "network"
    element = etree.SubElement(devices, "interface", type=kind)
    etree.SubElement(element, "mac", address=nic.mac)
    etree.SubElement(element, "source", **{kind: nic.bridge or nic.network})
    etree.SubElement(element, "model", type=nic.model)
