"""Changing one part of a stored domain document, so that nobody writes XML by hand for a vCPU count.

Each change takes the document as PVC stores it and returns the new document, plus (for devices) the device
elements it added or removed, which a node may hot-plug as they are: a NIC names only a bridge or a libvirt
network, so its element means the same on every host. The result is still checked by `pvc.domain_xml.parse`
before it is recorded, so an edit can never make a document the allowlist refuses. Pure: no I/O.
"""
import random
import re
from dataclasses import dataclass

from lxml import etree

from pvc.domain_xml import parse_root
from pvc.errors import Conflict, InvalidInput, NotFound
from pvc.schema import check_name

MAX_VCPUS = 1024
DISK_BUSES = {"virtio": "vd", "scsi": "sd", "sata": "sd", "ide": "hd"}
"""Bus → the device-name prefix libvirt expects for it."""
NIC_TYPES = ("bridge", "network")
NIC_MODELS = ("virtio", "e1000", "e1000e", "rtl8139", "vmxnet3")
LOCAL_MAC_PREFIX = "52:54:00"
"""The prefix QEMU and libvirt give generated guest MACs."""

_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_TARGET = re.compile(r"(vd|sd|hd)[a-z]{1,2}")


@dataclass(frozen=True)
class Edited:
    """A changed document, and the device elements added or removed (none for vCPUs and memory)."""
    xml: str
    devices: tuple[str, ...] = ()


def set_vcpus(xml: str, vcpus: int) -> Edited:
    """Exactly `vcpus` vCPUs, all online (a ``current`` below the maximum is dropped)."""
    if not isinstance(vcpus, int) or isinstance(vcpus, bool) or not 1 <= vcpus <= MAX_VCPUS:
        raise InvalidInput(f"vCPUs must be a whole number from 1 to {MAX_VCPUS}, not {vcpus!r}")
    root = parse_root(xml)
    element = root.find("vcpu")
    element.text = str(vcpus)
    element.attrib.pop("current", None)
    topology = root.find("cpu/topology")
    if topology is not None and _topology_count(topology) != vcpus:
        # libvirt refuses a topology that does not multiply out to the count; without one it picks its own.
        topology.getparent().remove(topology)
    return Edited(_text(root))


def set_memory(xml: str, memory_mib: int) -> Edited:
    """`memory_mib` MiB of memory, all of it given to the guest (<currentMemory> follows)."""
    if not isinstance(memory_mib, int) or isinstance(memory_mib, bool) or memory_mib < 1:
        raise InvalidInput(f"memory must be a whole number of MiB, at least 1, not {memory_mib!r}")
    root = parse_root(xml)
    for tag in ("memory", "currentMemory"):
        element = root.find(tag)
        if element is not None:
            element.text = str(memory_mib)
            element.set("unit", "MiB")
    return Edited(_text(root))


def _topology_count(topology: etree._Element) -> int | None:
    try:
        count = 1
        for part in ("sockets", "dies", "clusters", "cores", "threads"):
            count *= int(topology.get(part, "1"))
        return count
    except ValueError:
        return None


def split_volume(volume: str) -> tuple[str, str]:
    """``POOL/VOLUME`` → (pool, volume), both names checked."""
    pool, separator, name = str(volume).partition("/")
    if not separator:
        raise InvalidInput(f"a volume is named POOL/VOLUME, not {volume!r}")
    return check_name("pool", pool), check_name("volume", name)


def add_volume(xml: str, volume: str, target: str | None = None, bus: str = "scsi") -> Edited:
    """A disk on PVC volume ``POOL/VOLUME`` at `target` (default: the first free name for `bus`)."""
    pool, name = split_volume(volume)
    if bus not in DISK_BUSES:
        raise InvalidInput(f"unknown disk bus {bus!r} (one of: {', '.join(DISK_BUSES)})")
    root = parse_root(xml)
    if _disks_on(root, pool, name):
        raise Conflict(f"volume {pool}/{name} is already attached to this VM")
    used = {element.get("dev") for element in root.iterfind("devices/disk/target")}
    if target is None:
        target = _free_target(DISK_BUSES[bus], used)
    elif not _TARGET.fullmatch(target):
        raise InvalidInput(f"invalid disk target {target!r}: use sdX, vdX or hdX")
    elif target in used:
        raise Conflict(f"disk target {target} is already used by this VM")
    disk = etree.Element("disk", type="volume", device="disk")
    etree.SubElement(disk, "driver", name="qemu", type="raw")
    etree.SubElement(disk, "source", pool=pool, volume=name)
    etree.SubElement(disk, "target", dev=target, bus=bus)
    _devices(root).append(disk)
    return Edited(_text(root), (_text(disk),))


def add_file_disk(xml: str, path: str, target: str | None = None, bus: str = "scsi") -> Edited:
    """A disk on the host file (or device) `path` (upstream's ``vm volume add --type file``): a host path, so
    the domain allowlist lets it through only where the cluster allows host devices."""
    if bus not in DISK_BUSES:
        raise InvalidInput(f"unknown disk bus {bus!r} (one of: {', '.join(DISK_BUSES)})")
    if not path.startswith("/") or ".." in path.split("/") or any(character < " " for character in path):
        raise InvalidInput(f"a file volume is an absolute host path, not {path!r}")
    root = parse_root(xml)
    if _disks_on_file(root, path):
        raise Conflict(f"host file {path} is already attached to this VM")
    used = {element.get("dev") for element in root.iterfind("devices/disk/target")}
    if target is None:
        target = _free_target(DISK_BUSES[bus], used)
    elif not _TARGET.fullmatch(target):
        raise InvalidInput(f"invalid disk target {target!r}: use sdX, vdX or hdX")
    elif target in used:
        raise Conflict(f"disk target {target} is already used by this VM")
    disk = etree.Element("disk", type="file", device="disk")
    etree.SubElement(disk, "driver", name="qemu", type="raw")
    etree.SubElement(disk, "source", file=path)
    etree.SubElement(disk, "target", dev=target, bus=bus)
    _devices(root).append(disk)
    return Edited(_text(root), (_text(disk),))


def remove_file_disk(xml: str, path: str) -> Edited:
    """Without every disk on host file `path`."""
    root = parse_root(xml)
    disks = _disks_on_file(root, path)
    if not disks:
        raise NotFound(f"host file {path} is not attached to this VM")
    return _without(root, disks)


def remove_volume(xml: str, volume: str) -> Edited:
    """Without every disk on PVC volume ``POOL/VOLUME``."""
    pool, name = split_volume(volume)
    root = parse_root(xml)
    disks = _disks_on(root, pool, name)
    if not disks:
        raise NotFound(f"volume {pool}/{name} is not attached to this VM")
    return _without(root, disks)


def add_nic(xml: str, source: str, kind: str = "bridge", model: str = "virtio", mac: str | None = None) -> Edited:
    """An interface on bridge (or libvirt network) `source`, with `mac` or a generated one."""
    if kind not in NIC_TYPES:
        raise InvalidInput(f"unknown interface type {kind!r} (one of: {', '.join(NIC_TYPES)})")
    if model not in NIC_MODELS:
        raise InvalidInput(f"unknown interface model {model!r} (one of: {', '.join(NIC_MODELS)})")
    check_name("bridge" if kind == "bridge" else "network", source)
    root = parse_root(xml)
    used = {element.get("address", "").lower() for element in root.iterfind("devices/interface/mac")}
    mac = checked_mac(mac) if mac is not None else _free_mac(used)
    if mac in used:
        raise Conflict(f"MAC address {mac} is already used by this VM")
    interface = etree.Element("interface", type=kind)
    etree.SubElement(interface, "mac", address=mac)
    etree.SubElement(interface, "source", **{kind: source})
    etree.SubElement(interface, "model", type=model)
    _devices(root).append(interface)
    return Edited(_text(root), (_text(interface),))


def remove_nic(xml: str, source: str | None = None, mac: str | None = None) -> Edited:
    """Without the interface with `mac`, or (no MAC given) without every interface on `source`."""
    if source is None and mac is None:
        raise InvalidInput("name the network or bridge, or the MAC address, of the interface to remove")
    mac = checked_mac(mac) if mac is not None else None
    root = parse_root(xml)
    found = [interface for interface in root.iterfind("devices/interface")
             if (mac is None or _mac_of(interface) == mac) and (source is None or _source_of(interface) == source)]
    if not found:
        wanted = " on ".join(part for part in (mac, source) if part)
        raise NotFound(f"this VM has no interface {wanted}")
    return _without(root, found)


def checked_mac(mac: str) -> str:
    """A unicast MAC address, lower case; anything else is refused with the reason."""
    text = str(mac).strip().lower()
    if not _MAC.fullmatch(text):
        raise InvalidInput(f"invalid MAC address {mac!r}: use six colon-separated hex bytes, "
                           f"e.g. {LOCAL_MAC_PREFIX}:12:34:56")
    if int(text[:2], 16) & 1:
        raise InvalidInput(f"invalid MAC address {mac!r}: it is a multicast address (lowest bit of the first "
                           "byte set), which a NIC cannot have")
    return text


def _free_mac(used: set[str]) -> str:
    while True:
        mac = LOCAL_MAC_PREFIX + "".join(f":{random.randrange(256):02x}" for _ in range(3))
        if mac not in used:
            return mac


def _free_target(prefix: str, used: set[str]) -> str:
    letters = "abcdefghijklmnopqrstuvwxyz"
    for suffix in [*letters, *(first + second for first in letters for second in letters)]:
        if prefix + suffix not in used:
            return prefix + suffix
    raise Conflict(f"no free {prefix}X disk target is left in this VM")


def _disks_on(root: etree._Element, pool: str, volume: str) -> list[etree._Element]:
    return [disk for disk in root.iterfind("devices/disk[@type='volume']")
            if disk.find("source") is not None and disk.find("source").get("pool") == pool
            and disk.find("source").get("volume") == volume]


def _disks_on_file(root: etree._Element, path: str) -> list[etree._Element]:
    return [disk for disk in root.iterfind("devices/disk[@type='file']")
            if disk.find("source") is not None and disk.find("source").get("file") == path]


def _mac_of(interface: etree._Element) -> str | None:
    element = interface.find("mac")
    return element.get("address", "").lower() if element is not None else None


def _source_of(interface: etree._Element) -> str | None:
    element = interface.find("source")
    return (element.get("bridge") or element.get("network")) if element is not None else None


def _without(root: etree._Element, devices: list[etree._Element]) -> Edited:
    removed = tuple(_text(device) for device in devices)
    for device in devices:
        device.getparent().remove(device)
    return Edited(_text(root), removed)


def _devices(root: etree._Element) -> etree._Element:
    devices = root.find("devices")
    return devices if devices is not None else etree.SubElement(root, "devices")


def _text(element: etree._Element) -> str:
    return etree.tostring(element, encoding="unicode", with_tail=False)
