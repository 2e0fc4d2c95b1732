"""Libvirt domain XML, read as a hostile document.

The parser resolves no entities, loads no DTD and touches no network; a document that declares a DTD at all
is refused, so no entity can be smuggled in. An API key is not root on every hypervisor, so a document may use
only what PVC understands (`ALLOWLIST`): disks name PVC volumes, and what reaches the host (console log files,
boot images, firmware, graphics listeners) is filled in by the node. Everything else, including any element
PVC does not know, is refused with the element named. From a valid document PVC takes what it needs to place
and show a VM: name, uuid, memory, vCPUs, disks (and the pool volumes they use), NICs.
"""
import uuid as uuidlib
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping, NoReturn, Union

from lxml import etree

from pvc.errors import InvalidInput
from pvc.schema import check_name

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
                          huge_tree=False, remove_comments=False)
MAX_XML_BYTES = 1024 * 1024

_MEMORY_UNITS_TO_BYTES = {
    "b": 1, "bytes": 1, "k": 1024, "kib": 1024, "kb": 1000, "m": 1024 ** 2, "mib": 1024 ** 2, "mb": 1000 ** 2,
    "g": 1024 ** 3, "gib": 1024 ** 3, "gb": 1000 ** 3, "t": 1024 ** 4, "tib": 1024 ** 4, "tb": 1000 ** 4,
}


@dataclass
class Domain:
    """What PVC reads from a domain document; `xml` is the document as PVC stores it (uuid filled in)."""
    name: str
    uuid: str
    memory_mib: int
    vcpus: int
    xml: str
    disks: list[dict] = field(default_factory=list)
    nics: list[dict] = field(default_factory=list)

    @property
    def volumes(self) -> list[str]:
        """The pool volumes (``POOL/NAME``) this VM's disks use."""
        return [disk["volume"] for disk in self.disks if disk.get("volume")]


def parse(xml: str | bytes, default_uuid: str | None = None, allow_host_devices: bool = False) -> Domain:
    """Validate a domain document and read it; any problem is an `InvalidInput` saying what is wrong.

    Only what `ALLOWLIST` allows passes; host devices (<hostdev>, disks naming host paths) only with
    `allow_host_devices`, the cluster config setting of that name. A document without a <uuid> gets
    `default_uuid`, or a new random one."""
    root = parse_root(xml)
    check_allowed(root, allow_host_devices)
    name = _text(root, "name")
    if not name:
        raise InvalidInput("domain XML has no <name>")
    check_name("VM", name)
    uuid = _ensure_uuid(root, default_uuid or str(uuidlib.uuid4()))
    return Domain(
        name=name, uuid=uuid, memory_mib=_memory_mib(root), vcpus=_vcpus(root),
        xml=etree.tostring(root, encoding="unicode"), disks=_disks(root), nics=_nics(root),
    )


def renamed(xml: str, new_name: str) -> str:
    """The same document with a new <name>."""
    root = parse_root(xml)
    root.find("name").text = check_name("VM", new_name)
    return etree.tostring(root, encoding="unicode")


def parse_root(xml: str | bytes) -> etree._Element:
    data = xml.encode() if isinstance(xml, str) else bytes(xml)
    if len(data) > MAX_XML_BYTES:
        raise InvalidInput(f"domain XML is larger than {MAX_XML_BYTES // 1024} KiB")
    try:
        tree = etree.fromstring(data, _PARSER).getroottree()
    except etree.XMLSyntaxError as error:
        raise InvalidInput(f"malformed domain XML: {error}") from None
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise InvalidInput("domain XML must not contain a DTD or entity declarations")
    root = tree.getroot()
    if root.tag != "domain":
        raise InvalidInput(f"expected a <domain> document, not <{root.tag}>")
    if not root.get("type"):
        raise InvalidInput("<domain> has no type attribute (e.g. type='kvm')")
    return root


def boot_file_name(tag: str, text: str) -> str:
    """A direct-boot kernel or initrd: a bare file name in each node's boot-image directory, so that no
    stored document names a host path."""
    name = text.strip()
    if not name or "/" in name or name in (".", ".."):
        raise InvalidInput(f"<{tag}> must name a file of the nodes' boot-image directory (a bare file name, "
                           f"no path), not {text!r}")
    return name


def _text(root: etree._Element, path: str) -> str | None:
    element = root.find(path)
    return element.text.strip() if element is not None and element.text else None


def _ensure_uuid(root: etree._Element, generated: str) -> str:
    text = _text(root, "uuid")
    if text is None:
        element = root.find("uuid")
        if element is None:
            element = etree.Element("uuid")
            root.insert(list(root).index(root.find("name")) + 1, element)
        element.text = generated
        return generated
    try:
        return str(uuidlib.UUID(text))
    except ValueError:
        raise InvalidInput(f"invalid <uuid> {text!r}") from None


def _memory_mib(root: etree._Element) -> int:
    element = root.find("memory")
    if element is None or not (element.text or "").strip():
        raise InvalidInput("domain XML has no <memory>")
    unit = (element.get("unit") or "KiB").lower()
    if unit not in _MEMORY_UNITS_TO_BYTES:
        raise InvalidInput(f"unknown <memory> unit {element.get('unit')!r}")
    try:
        amount = int(element.text.strip())
    except ValueError:
        raise InvalidInput(f"<memory> is not a whole number: {element.text.strip()!r}") from None
    mib = amount * _MEMORY_UNITS_TO_BYTES[unit] // (1024 ** 2)
    if mib < 1:
        raise InvalidInput("<memory> must be at least 1 MiB")
    return mib


def _vcpus(root: etree._Element) -> int:
    text = _text(root, "vcpu")
    if text is None:
        raise InvalidInput("domain XML has no <vcpu>")
    if not text.isdigit() or int(text) < 1:
        raise InvalidInput(f"<vcpu> must be a positive whole number, not {text!r}")
    return int(text)


def _disks(root: etree._Element) -> list[dict]:
    disks = []
    for disk in root.iterfind("devices/disk"):
        source = disk.find("source")
        target = disk.find("target")
        entry = {"type": disk.get("type"), "device": disk.get("device", "disk"),
                 "target": target.get("dev") if target is not None else None, "source": None, "volume": None}
        driver = disk.find("driver")
        driver_type = driver.get("type") if driver is not None else None
        if source is not None:
            if disk.get("type") == "volume":
                entry["volume"] = (f"{check_name('pool', source.get('pool'))}/"
                                   f"{check_name('volume', source.get('volume'))}")
                entry["source"] = entry["volume"]
            else:
                entry["source"] = source.get("file") or source.get("dev")
        if entry["volume"] and driver_type not in (None, "raw"):
            raise InvalidInput(f"disk {entry['target'] or entry['volume']} opens pool volume {entry['volume']} as "
                               f"{driver_type}: PVC volumes hold raw images, so use <driver type='raw'/> (a "
                               "format header inside a volume must never be interpreted)")
        disks.append(entry)
    return disks


def _nics(root: etree._Element) -> list[dict]:
    nics = []
    for interface in root.iterfind("devices/interface"):
        mac = interface.find("mac")
        source = interface.find("source")
        model = interface.find("model")
        nics.append({
            "type": interface.get("type"),
            "mac": mac.get("address") if mac is not None else None,
            "source": (source.get("bridge") or source.get("network") or source.get("dev"))
            if source is not None else None,
            "model": model.get("type") if model is not None else None,
        })
    return nics


# -- what PVC understands -----------------------------------------------------------------------------------
# An allowlist, not a denylist: an element or attribute that is not here is refused, so a libvirt feature
# that reaches the host is refused until someone decides how PVC handles it, and then it is added here.

ANY = None
"""An attribute (or text) that may take any value."""

Values = Union[tuple[str, ...], None]
TextCheck = Callable[[str, str], None]
"""(element path, text) → None, or `InvalidInput` saying why the text is refused."""


@dataclass(frozen=True)
class Element:
    """What PVC allows of one element.

    `attributes` maps a name to its allowed values (or `ANY`); `children` maps a tag to its rule; `text` is
    `ANY`, the allowed words, or a check; `required` names attributes (``@name``) and children it must have.
    A `host_device` element passes only when the cluster allows host devices. Below an `opaque` element PVC
    checks nothing: libvirt never acts on <metadata>, and an administrator-allowed <hostdev> is taken as
    written."""
    attributes: Mapping[str, Values] = field(default_factory=dict)
    children: Mapping[str, Union["Element", "Typed"]] = field(default_factory=dict)
    text: Values | TextCheck = ANY
    required: tuple[str, ...] = ()
    host_device: bool = False
    opaque: bool = False


@dataclass(frozen=True)
class Typed:
    """An element whose `type` attribute decides what it is: one rule per allowed type, `why` for the others,
    and the type libvirt assumes when none is given (`default`)."""
    variants: Mapping[str, Element]
    why: str
    default: str | None = None


def element(children: Mapping[str, Union[Element, Typed]] | None = None, *, text: Values | TextCheck = ANY,
            required: tuple[str, ...] = (), host_device: bool = False, opaque: bool = False,
            **attributes: Values) -> Element:
    return Element(attributes, children or {}, text, required, host_device, opaque)


def typed(why: str, default: str | None = None, **variants: Element) -> Typed:
    return Typed(variants, why, default)


def _boot_file(path: str, text: str) -> None:
    boot_file_name(path.rpartition("/")[2], text)


def _no_text(why: str) -> TextCheck:
    def check(path: str, text: str) -> None:
        if text.strip():
            _refuse(f"{path}>{_shown(text)}</{path.rpartition('/')[2]}", why)
    return check


_ALLOW_HOST_DEVICES = ("an administrator can allow host devices with "
                       "'pvc cluster config --allow-host-devices'")

TEXT = element()
"""An element with text and no attributes (<name>, <cmdline>, ...)."""
_ADDRESS = element(**{name: ANY for name in (
    "type", "domain", "bus", "slot", "function", "multifunction", "controller", "target", "unit", "port",
    "reg", "cssid", "ssid", "devno", "iobase", "irq")})
_ALIAS = element(name=ANY)
_LIFECYCLE = element(text=("destroy", "restart", "preserve", "rename-restart"))
"""What a guest's power-off, reboot or crash may lead to: never a core dump, which libvirt writes to the host's
disk as large as the guest's memory, again at every crash (``coredump-*``; a watchdog's ``dump`` likewise)."""
_BOOT = element(order=ANY, loadparm=ANY)
_PLACEMENT = {"address": _ADDRESS, "alias": _ALIAS}
_STATE = element(state=("on", "off"))

_DISK_CHILDREN = {
    "driver": element(name=("qemu",), type=ANY, cache=ANY, io=ANY, discard=ANY, detect_zeroes=ANY,
                      iothread=ANY, queues=ANY, queue_size=ANY, error_policy=ANY, rerror_policy=ANY,
                      copy_on_read=ANY),
    "target": element(dev=ANY, bus=ANY, tray=ANY, removable=ANY, rotation_rate=ANY, required=("@dev",)),
    "readonly": element(), "shareable": element(), "serial": TEXT, "wwn": TEXT, "vendor": TEXT,
    "product": TEXT, "boot": _BOOT,
    "blockio": element(logical_block_size=ANY, physical_block_size=ANY, discard_granularity=ANY),
    "geometry": element(cyls=ANY, heads=ANY, secs=ANY, trans=ANY),
    "iotune": element({name: TEXT for name in (
        "total_bytes_sec", "read_bytes_sec", "write_bytes_sec", "total_iops_sec", "read_iops_sec",
        "write_iops_sec", "total_bytes_sec_max", "read_bytes_sec_max", "write_bytes_sec_max",
        "total_iops_sec_max", "read_iops_sec_max", "write_iops_sec_max", "total_bytes_sec_max_length",
        "read_bytes_sec_max_length", "write_bytes_sec_max_length", "total_iops_sec_max_length",
        "read_iops_sec_max_length", "write_iops_sec_max_length", "size_iops_sec", "group_name")}),
    **_PLACEMENT,
}
_DISK_DEVICES = ("disk", "cdrom", "floppy")

_NIC_CHILDREN = {
    "mac": element(address=ANY), "model": element(type=ANY), "boot": _BOOT, "link": element(state=ANY),
    "mtu": element(size=ANY),
    "driver": element(name=("vhost", "qemu"), queues=ANY, txmode=ANY, ioeventfd=ANY, event_idx=ANY,
                      rx_queue_size=ANY, tx_queue_size=ANY),
    "vlan": element({"tag": element(id=ANY, nativeMode=ANY)}, trunk=ANY),
    "virtualport": element({"parameters": element(interfaceid=ANY, profileid=ANY)}, type=("openvswitch",)),
    "bandwidth": element({"inbound": element(average=ANY, peak=ANY, burst=ANY, floor=ANY),
                          "outbound": element(average=ANY, peak=ANY, burst=ANY)}),
    "filterref": element({"parameter": element(name=ANY, value=ANY)}, filter=ANY),
    "rom": element(bar=ANY, enabled=ANY),
    **_PLACEMENT,
}

_CHARDEV_WHY = "a {tag} is a pty{file}; other types write to host files, sockets or devices"
_CHARDEV = element({"target": element({"model": element(name=ANY)}, type=ANY, port=ANY), **_PLACEMENT})
"""A pty, or a file the node points at its console log: either way no <source> of the user's."""
_CHANNEL_TARGET = element(type=("virtio",), name=ANY, state=ANY)

_HYPERV = element({name: element(state=("on", "off"), retries=ANY, value=ANY) for name in (
    "relaxed", "vapic", "spinlocks", "vpindex", "runtime", "synic", "stimer", "reset", "vendor_id",
    "frequencies", "reenlightenment", "tlbflush", "ipi", "evmcs", "avic")}, mode=("custom", "passthrough"))

_GRAPHICS_COMMON = dict(autoport=("yes",), port=("-1",), passwd=ANY, passwdValidTo=ANY, keymap=ANY,
                        connected=ANY, listen=("127.0.0.1", "::1"))

ALLOWLIST = element({
    "name": TEXT, "uuid": TEXT, "genid": TEXT, "title": TEXT, "description": TEXT,
    "metadata": element(opaque=True),
    "memory": element(unit=ANY, dumpCore=ANY), "currentMemory": element(unit=ANY),
    "maxMemory": element(slots=ANY, unit=ANY),
    "memoryBacking": element({
        "hugepages": element({"page": element(size=ANY, unit=ANY)}), "nosharepages": element(),
        "locked": element(), "source": element(type=("anonymous", "memfd")),
        "access": element(mode=("shared", "private")), "allocation": element(mode=ANY, threads=ANY),
        "discard": element()}),
    "vcpu": element(placement=ANY, current=ANY),
    "iothreads": TEXT, "iothreadids": element({"iothread": element(id=ANY)}),
    "cpu": element({
        "model": element(fallback=ANY, vendor_id=ANY), "vendor": TEXT,
        "topology": element(sockets=ANY, dies=ANY, clusters=ANY, cores=ANY, threads=ANY),
        "feature": element(policy=ANY, name=ANY), "cache": element(level=ANY, mode=ANY),
        "numa": element({"cell": element(id=ANY, cpus=ANY, memory=ANY, unit=ANY, memAccess=ANY, discard=ANY)}),
    }, mode=ANY, match=ANY, check=ANY, migratable=ANY),
    "sysinfo": element({
        section: element({"entry": element(name=ANY)})
        for section in ("bios", "system", "baseBoard", "chassis", "processor", "memory")
    } | {"oemStrings": element({"entry": TEXT})}, type=("smbios",)),
    "os": element({
        "type": element(arch=ANY, machine=ANY, text=("hvm",)),
        "kernel": element(text=_boot_file), "initrd": element(text=_boot_file), "cmdline": TEXT,
        "loader": element(readonly=ANY, secure=ANY, type=("pflash", "rom"), text=_no_text(
            "EFI firmware comes from the node: use <os firmware='efi'>, with no firmware path")),
        "firmware": element({"feature": element(enabled=ANY, name=ANY)}),
        "boot": element(dev=("hd", "cdrom", "network", "fd")),
        "bootmenu": element(enable=ANY, timeout=ANY), "bios": element(useserial=ANY, rebootTimeout=ANY),
        "smbios": element(mode=("emulate", "sysinfo")),
    }, firmware=("efi", "bios")),
    "features": element({
        "acpi": element(), "apic": element(eoi=ANY), "pae": element(), "hap": element(state=ANY),
        "vmport": _STATE, "pmu": _STATE, "smm": _STATE, "vmcoreinfo": _STATE, "ioapic": element(driver=ANY),
        "hyperv": _HYPERV,
        "kvm": element({"hidden": _STATE, "hint-dedicated": _STATE, "poll-control": _STATE}),
        "tcg": element({"tb-cache": element(unit=ANY)}),
    }),
    "clock": element({"timer": element(name=ANY, present=ANY, tickpolicy=ANY, track=ANY, frequency=ANY,
                                       mode=ANY)},
                     offset=("utc", "localtime", "timezone", "variable"), timezone=ANY, adjustment=ANY,
                     basis=ANY),
    "on_poweroff": _LIFECYCLE, "on_reboot": _LIFECYCLE, "on_crash": _LIFECYCLE,
    "pm": element({"suspend-to-mem": element(enabled=ANY), "suspend-to-disk": element(enabled=ANY)}),
    "devices": element({
        "disk": typed(
            "a disk names a PVC volume as <disk type='volume'><source pool='POOL' volume='VOLUME'/> "
            "(the node fills in the file or RBD source)", default="file",
            volume=element({**_DISK_CHILDREN, "source": element(pool=ANY, volume=ANY, required=("@pool", "@volume"))},
                           device=_DISK_DEVICES, required=("source",)),
            file=element({**_DISK_CHILDREN, "source": element(file=ANY, startupPolicy=ANY, host_device=True)},
                         device=_DISK_DEVICES),
            block=element({**_DISK_CHILDREN, "source": element(dev=ANY, host_device=True)},
                          device=_DISK_DEVICES)),
        "controller": element({"driver": element(queues=ANY, cmd_per_lun=ANY, max_sectors=ANY, ioeventfd=ANY,
                                                 iothread=ANY),
                               "model": element(name=ANY),
                               "target": element(chassisNr=ANY, chassis=ANY, port=ANY, busNr=ANY, index=ANY,
                                                 hotplug=ANY),
                               **_PLACEMENT},
                              type=("ide", "fdc", "scsi", "sata", "usb", "virtio-serial", "pci"), index=ANY,
                              model=ANY, ports=ANY, vectors=ANY),
        "interface": typed(
            "an interface joins a bridge (<interface type='bridge'><source bridge='BRIDGE'/>) or a libvirt "
            "network (type='network'); other types reach into the host (ethernet runs host scripts, direct "
            "and hostdev take host NICs, user reaches the host's own services)", default="user",
            bridge=element({**_NIC_CHILDREN, "source": element(bridge=ANY, required=("@bridge",))}),
            network=element({**_NIC_CHILDREN, "source": element(network=ANY, portgroup=ANY,
                                                                required=("@network",))})),
        "serial": typed(_CHARDEV_WHY.format(tag="serial device", file=", or type='file' without a path (the "
                                            "node writes it to its console log)"),
                        default="pty", pty=_CHARDEV, file=_CHARDEV),
        "console": typed(_CHARDEV_WHY.format(tag="console", file=", or type='file' without a path (the node "
                                             "writes it to its console log)"),
                         default="pty", pty=_CHARDEV, file=_CHARDEV),
        "parallel": typed(_CHARDEV_WHY.format(tag="parallel port", file=""), default="pty", pty=_CHARDEV),
        "channel": typed(_CHARDEV_WHY.format(tag="channel", file=", spicevmc, or type='unix' without a path "
                                             "(libvirt makes the socket, e.g. for the guest agent)"),
                         default="pty",
                         pty=element({"target": _CHANNEL_TARGET, **_PLACEMENT}),
                         unix=element({"source": element(mode=("bind",)), "target": _CHANNEL_TARGET,
                                       **_PLACEMENT}),
                         spicevmc=element({"target": _CHANNEL_TARGET, **_PLACEMENT})),
        "graphics": typed(
            "graphics are VNC or SPICE, listening where the node's libvirt listens", vnc=element(
                **_GRAPHICS_COMMON, sharePolicy=ANY),
            spice=element({name: element(**{attribute: ANY}) for name, attribute in (
                ("image", "compression"), ("jpeg", "compression"), ("zlib", "compression"),
                ("playback", "compression"), ("streaming", "mode"), ("clipboard", "copypaste"),
                ("mouse", "mode"), ("filetransfer", "enable"))} | {"channel": element(name=ANY, mode=ANY)},
                **_GRAPHICS_COMMON, tlsPort=("-1",), defaultMode=ANY)),
        "video": element({"model": element({"acceleration": element(accel3d=ANY, accel2d=ANY)},
                                           type=("vga", "cirrus", "qxl", "virtio", "bochs", "ramfb", "none"),
                                           vram=ANY, heads=ANY, primary=ANY, ram=ANY, vgamem=ANY, vram64=ANY),
                          **_PLACEMENT}),
        "input": element(_PLACEMENT, type=("tablet", "mouse", "keyboard"), bus=("usb", "ps2", "virtio")),
        "sound": element({"codec": element(type=ANY), **_PLACEMENT}, model=ANY),
        "audio": element(id=ANY, type=("none", "spice")),
        "memballoon": element({"stats": element(period=ANY), **_PLACEMENT}, model=ANY, autodeflate=ANY,
                              freePageReporting=ANY),
        "rng": element({"backend": element(model=("random", "builtin"),
                                           text=("", "/dev/urandom", "/dev/random", "/dev/hwrng")),
                        "rate": element(period=ANY, bytes=ANY), **_PLACEMENT}, model=ANY),
        "watchdog": element(_PLACEMENT, model=ANY, action=("reset", "shutdown", "poweroff", "pause", "none",
                                                           "inject-nmi")),
        "panic": element(_PLACEMENT, model=ANY),
        "tpm": element({"backend": element(type=("emulator",), version=ANY), **_PLACEMENT}, model=ANY),
        "hostdev": element(host_device=True, opaque=True),
    }),
}, type=("kvm", "qemu", "test"))
"""What PVC allows in a domain document: <domain> and, below it, every element PVC understands."""

ELEMENT_REASONS = {
    "hostdev": "it passes a host device to the guest",
    "devices/disk/source": "a disk names a PVC volume as <disk type='volume'><source pool='POOL' "
                           "volume='VOLUME'/>, not a host path",
    "filesystem": "it shares a host directory with the guest",
    "emulator": "it names a program on the host; each node runs its own QEMU",
    "seclabel": "it changes how the host confines the guest",
    "os/nvram": "NVRAM is kept by the node: use <os firmware='efi'>, with no NVRAM path",
    "os/dtb": "it names a host file",
    "script": "it runs a program on the host",
    "backingStore": "it names host paths: PVC volumes are raw images without backing files",
    "log": "it writes to a host file",
    "devices/graphics/listen": "graphics listen where the node's libvirt listens, not on an address or "
                               "socket of the guest's own",
    "devices/interface/target": "the node names the host's tap devices",
    "devices/serial/source": "the node decides where a serial device goes: a pty, or a file without a path, "
                             "which the node writes to its console log",
    "devices/console/source": "the node decides where a console goes: a pty, or a file without a path, "
                              "which the node writes to its console log",
}
"""Why a known element is refused, by path or by tag (anywhere); any other element gets a general reason."""

ATTRIBUTE_REASONS = {
    "@file": "it names a host file",
    "@path": "it names a host path",
    "@socket": "it names a host socket",
    "devices/graphics@listen": "graphics listen where the node's libvirt listens (its vnc_listen), or on "
                               "loopback (127.0.0.1, ::1), not on an address a VM chooses",
    "devices/graphics@autoport": "graphics ports are chosen by the node (autoport)",
    "devices/graphics@port": "graphics ports are chosen by the node (autoport)",
    "devices/graphics@tlsPort": "graphics ports are chosen by the node (autoport)",
}
"""Why an attribute (or a value of it) is refused, by ``path@name`` or ``@name``."""


def check_allowed(root: etree._Element, allow_host_devices: bool = False) -> None:
    """Refuse (`InvalidInput`, naming the element) anything in the document that `ALLOWLIST` does not allow;
    host devices pass only with `allow_host_devices`."""
    _check_attributes(root, ALLOWLIST, "domain", "domain")
    _check_children(root, ALLOWLIST, "", allow_host_devices)


def _check_children(node: etree._Element, rule: Element, path: str, allow_host_devices: bool) -> None:
    for child in node:
        if not isinstance(child.tag, str):
            continue  # a comment or processing instruction
        child_path = f"{path}/{_tag(child)}" if path else _tag(child)
        if etree.QName(child).namespace:
            _refuse(_described(child, child_path),
                    f"elements outside libvirt's domain schema (here {etree.QName(child).namespace}) hand "
                    "options straight to the hypervisor on the host")
        child_rule = rule.children.get(child.tag)
        if isinstance(child_rule, Typed):
            child_rule = _variant(child, child_rule, child_path)
        if child_rule is None:
            _refuse(_described(child, child_path), _element_reason(child_path)
                    or "PVC does not know this element, and allows only what it knows")
        if child_rule.host_device and not allow_host_devices:
            _refuse(_described(child, child_path),
                    f"{_element_reason(child_path) or 'it reaches the host'}; {_ALLOW_HOST_DEVICES}")
        if child_rule.opaque:
            continue
        _check_attributes(child, child_rule, child_path, _tag(child))
        _check_text(child, child_rule, child_path)
        _check_children(child, child_rule, child_path, allow_host_devices)


def _variant(node: etree._Element, rule: Typed, path: str) -> Element:
    kind = node.get("type", rule.default)
    if kind is None:
        _refuse(path, f"it needs a type attribute (one of: {', '.join(rule.variants)})")
    variant = rule.variants.get(kind)
    if variant is None:
        _refuse(f"{path} type={_shown(kind)}", rule.why)
    return replace(variant, attributes={**variant.attributes, "type": ANY})


def _check_attributes(node: etree._Element, rule: Element, path: str, tag: str) -> None:
    for name, value in node.attrib.items():
        shown_name = _attribute_name(node, name)
        if name not in rule.attributes:
            _refuse(f"{path} {shown_name}={_shown(value)}", _attribute_reason(path, name)
                    or f"PVC does not know the attribute {shown_name} of <{tag}>")
        allowed = rule.attributes[name]
        if allowed is not ANY and value not in allowed:
            _refuse(f"{path} {shown_name}={_shown(value)}", _attribute_reason(path, name)
                    or f"{shown_name} must be one of: {', '.join(allowed)}")
    for needed in rule.required:
        if needed.startswith("@") and node.get(needed[1:]) is None:
            _refuse(path, f"it needs a {needed[1:]} attribute")
        if not needed.startswith("@") and node.find(needed) is None:
            _refuse(path, f"it needs a <{needed}>")


def _check_text(node: etree._Element, rule: Element, path: str) -> None:
    if rule.text is ANY:
        return
    text = (node.text or "").strip()
    if callable(rule.text):
        rule.text(path, text)
    elif text not in rule.text:
        _refuse(f"{path}>{_shown(text)}</{_tag(node)}",
                f"its text must be one of: {', '.join(repr(word) for word in rule.text)}")


def _element_reason(path: str) -> str | None:
    return ELEMENT_REASONS.get(path) or ELEMENT_REASONS.get(path.rpartition("/")[2])


def _attribute_reason(path: str, name: str) -> str | None:
    return ATTRIBUTE_REASONS.get(f"{path}@{name}") or ATTRIBUTE_REASONS.get(f"@{name}") or None


def _tag(node: etree._Element) -> str:
    qname = etree.QName(node)
    return f"{node.prefix}:{qname.localname}" if qname.namespace and node.prefix else qname.localname


def _attribute_name(node: etree._Element, attribute: str) -> str:
    """An attribute's name as written (``prefix:name`` for a namespaced one)."""
    if "{" not in attribute:
        return attribute
    qname = etree.QName(attribute)
    prefix = next((key for key, value in node.nsmap.items() if value == qname.namespace and key), None)
    return f"{prefix}:{qname.localname}" if prefix else qname.localname


def _described(node: etree._Element, path: str) -> str:
    """The element as a user wrote it (its path, then its first attributes), for an error message."""
    attributes = [f"{_attribute_name(node, name)}={_shown(value)}" for name, value in list(node.attrib.items())[:3]]
    return " ".join([path, *attributes])


def _shown(value: str, limit: int = 60) -> str:
    """A value quoted on one line, shortened if long: error messages stay one line."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


def _refuse(what: str, why: str) -> NoReturn:
    raise InvalidInput(f"domain XML: <{what}> is refused: {why}")
