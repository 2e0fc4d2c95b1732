"""Libvirt domain XML, read as a hostile document.

The parser resolves no entities, loads no DTD and touches no network; a document that declares a DTD at all
is refused, so no entity can be smuggled in. From a valid document PVC takes what it needs to place and show
a VM: name, uuid, memory, vCPUs, disks (and the pool volumes they use), NICs.
"""
import uuid as uuidlib
from dataclasses import dataclass, field

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


def parse(xml: str | bytes, default_uuid: str | None = None) -> Domain:
    """Validate a domain document and read it; any problem is an `InvalidInput` saying what is wrong.

    A document without a <uuid> gets `default_uuid`, or a new random one."""
    root = parse_root(xml)
    name = _text(root, "name")
    if not name:
        raise InvalidInput("domain XML has no <name>")
    check_name("VM", name)
    uuid = _ensure_uuid(root, default_uuid or str(uuidlib.uuid4()))
    for tag in ("kernel", "initrd"):
        element = root.find(f"os/{tag}")
        if element is not None:
            boot_file_name(tag, element.text or "")
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
                entry["volume"] = f"{source.get('pool')}/{source.get('volume')}"
                entry["source"] = entry["volume"]
            elif disk.get("type") == "network" and source.get("protocol") == "rbd":
                entry["volume"] = source.get("name")
                entry["source"] = f"rbd:{source.get('name')}"
            else:
                entry["source"] = source.get("file") or source.get("dev") or source.get("name")
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
