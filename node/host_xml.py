"""A stored domain document made concrete for one host, just before libvirt gets it.

What PVC stores names no host path: disks name PVC volumes (``<disk type='volume'>`` with ``pool`` and
``volume``), a direct-boot kernel and initrd are bare file names in the node's boot-image directory, a serial
console written to a file gets its path from the node, and a NIC names a PVC network by VNI
(``<interface type='network'><source network='VNI'/>``), which becomes the network's bridge. So one definition
runs on every node, and a live migration hands the target the document made for the target (`HostPaths` of
that node).

Every document PVC gives libvirt carries PVC's own element inside ``<metadata>`` (`METADATA_NAMESPACE`),
naming the VM and its UUID: a node knows the domains PVC manages by it, after any restart, and leaves the
others (defined by hand) alone. Whatever a stored document has in that namespace is replaced.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from lxml import etree

from pvc.domain_xml import boot_file_name, parse_root
from pvc.errors import InvalidInput
from pvc.node.network.devices import bridge_name

METADATA_NAMESPACE = "https://parallelvirtualcluster.org/xmlns/pvc/vm"
METADATA_PREFIX = "pvc"

DiskSource = Callable[[str, str], Mapping[str, str]]
"""(pool, volume) → how the hypervisor opens it (`pvc.hookspecs.StorageBackend.disk_source`)."""


@dataclass(frozen=True)
class HostPaths:
    """The directories a node keeps for its guests; published in the node's record for migration sources."""
    boot_image_directory: str
    console_log_directory: str

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> "HostPaths":
        paths = record.get("host_paths") or {}
        return cls(paths.get("boot_image_directory", ""), paths.get("console_log_directory", ""))

    def console_log(self, vm: str) -> Path:
        return Path(self.console_log_directory) / f"{vm}.log"


def for_host(xml: str, paths: HostPaths, disk_source: DiskSource,
             network_mtu: Callable[[int], int | None] = lambda _vni: None) -> str:
    """The domain document libvirt on the host with `paths` is given; a NIC on PVC network VNI joins the
    network's bridge, at the network's MTU (`network_mtu`) unless the document gives one."""
    root = parse_root(xml)
    name = root.findtext("name")
    for interface in root.iterfind("devices/interface[@type='network']"):
        _to_bridge(interface, network_mtu)
    for disk in root.iterfind("devices/disk[@type='volume']"):
        _resolve_volume(disk, disk_source)
    for tag in ("kernel", "initrd"):
        element = root.find(f"os/{tag}")
        if element is not None and element.text:
            element.text = str(Path(paths.boot_image_directory) / boot_file_name(tag, element.text))
    for device in root.iterfind("devices/serial[@type='file']"):
        _console_to(device, paths.console_log(name))
    for device in root.iterfind("devices/console[@type='file']"):
        _console_to(device, paths.console_log(name))
    _mark_managed(root, name, root.findtext("uuid"))
    return etree.tostring(root, encoding="unicode")


def device_for_host(device_xml: str, resolve: Callable[[str], int],
                    network_mtu: Callable[[int], int | None] = lambda _vni: None) -> tuple[str, list[int]]:
    """A device a running guest gets (a hot-plugged NIC) as this host's libvirt takes it, and the PVC networks
    it needs: a NIC on a network (`resolve` turns its VNI or description into the VNI) joins its bridge, as in
    `for_host`."""
    root = parse_root(f"<domain type='kvm'><devices>{device_xml}</devices></domain>")
    devices = list(root.find("devices"))
    if len(devices) != 1:
        raise InvalidInput("a live change attaches or detaches exactly one device")
    device, vnis = devices[0], []
    if device.tag == "interface" and device.get("type") == "network":
        source = device.find("source")
        vnis.append(resolve(source.get("network")))
        source.set("network", str(vnis[0]))
        _to_bridge(device, network_mtu)
    return etree.tostring(device, encoding="unicode"), vnis


def _mark_managed(root: etree._Element, name: str, uuid: str | None) -> None:
    """Put PVC's element in the domain's <metadata>, replacing any element of PVC's namespace already there."""
    metadata = root.find("metadata")
    if metadata is None:
        metadata = etree.SubElement(root, "metadata")
    for element in list(metadata):
        if isinstance(element.tag, str) and etree.QName(element).namespace == METADATA_NAMESPACE:
            metadata.remove(element)
    element = etree.SubElement(metadata, etree.QName(METADATA_NAMESPACE, "vm"),
                               nsmap={METADATA_PREFIX: METADATA_NAMESPACE})
    element.set("name", name)
    if uuid:
        element.set("uuid", uuid.strip())


def _resolve_volume(disk: etree._Element, disk_source: DiskSource) -> None:
    source = disk.find("source")
    pool, volume = source.get("pool"), source.get("volume")
    resolved = dict(disk_source(pool, volume))
    kind = resolved.pop("type")
    disk.set("type", kind)
    for attribute in list(source.attrib):
        del source.attrib[attribute]
    config = resolved.pop("config", None)
    for attribute, value in resolved.items():
        source.set(attribute, value)
    if config:
        etree.SubElement(source, "config", file=config)


def _to_bridge(interface: etree._Element, network_mtu: Callable[[int], int | None]) -> None:
    source = interface.find("source")
    vni = int(source.get("network"))
    interface.set("type", "bridge")
    for attribute in list(source.attrib):
        del source.attrib[attribute]
    source.set("bridge", bridge_name(vni))
    mtu = network_mtu(vni)
    if mtu and interface.find("mtu") is None:
        etree.SubElement(interface, "mtu", size=str(mtu))


def _console_to(device: etree._Element, path: Path) -> None:
    source = device.find("source")
    if source is None:
        source = etree.Element("source")
        device.insert(0, source)
    source.attrib.clear()
    source.set("path", str(path))
    source.set("append", "on")
