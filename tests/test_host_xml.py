"""A stored domain names no host path; each node makes it concrete for itself just before libvirt gets it."""
import pytest
from lxml import etree

from pvc import domain_xml
from pvc.cli.localcluster.guest import domain_xml as guest_domain_xml
from pvc.errors import InvalidInput
from pvc.node.host_xml import HostPaths, for_host

PATHS = HostPaths("/srv/boot", "/var/log/pvc/console")


def _disk_source(pool: str, volume: str) -> dict[str, str]:
    if pool == "rbdpool":
        return {"type": "network", "protocol": "rbd", "name": f"{pool}/{volume}", "config": "/etc/ceph/ceph.conf"}
    return {"type": "file", "file": f"/storage/{pool}/{volume}"}


def test_volumes_boot_files_and_the_console_get_this_hosts_paths():
    stored = domain_xml.parse(guest_domain_xml("g1", disk="vms/g1-root")).xml

    root = etree.fromstring(for_host(stored, PATHS, _disk_source))

    disk = root.find("devices/disk")
    assert disk.get("type") == "file" and disk.find("source").attrib == {"file": "/storage/vms/g1-root"}
    assert root.findtext("os/kernel") == "/srv/boot/pvc-guest-vmlinuz"
    assert root.findtext("os/initrd") == "/srv/boot/pvc-guest-initrd.img"
    assert root.find("devices/serial/source").attrib == {"path": "/var/log/pvc/console/g1.log", "append": "on"}
    assert "/srv" not in stored and "/var" not in stored and "/storage" not in stored


def test_an_rbd_volume_becomes_a_network_disk_naming_the_ceph_config():
    stored = domain_xml.parse(guest_domain_xml("g2", disk="rbdpool/g2-root")).xml

    source = etree.fromstring(for_host(stored, PATHS, _disk_source)).find("devices/disk/source")

    assert source.attrib == {"protocol": "rbd", "name": "rbdpool/g2-root"}
    assert source.find("config").get("file") == "/etc/ceph/ceph.conf"


@pytest.mark.parametrize("kernel", ["/boot/vmlinuz", "../vmlinuz", "boot/vmlinuz", ""])
def test_a_kernel_named_by_path_is_refused_at_definition(kernel):
    xml = guest_domain_xml("g3").replace(">pvc-guest-vmlinuz<", f">{kernel}<")
    with pytest.raises(InvalidInput, match="bare file name"):
        domain_xml.parse(xml)


def test_pvcs_metadata_names_the_vm_and_replaces_any_element_in_pvcs_namespace():
    xml = ("<domain type='test'><name>m1</name><uuid>11111111-2222-3333-4444-555555555555</uuid>"
           "<memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type>hvm</type></os><metadata>"
           "<app:note xmlns:app='https://example.org/app'>kept</app:note>"
           "<fake:vm xmlns:fake='https://parallelvirtualcluster.org/xmlns/pvc/vm' name='other' uuid='x'/>"
           "</metadata></domain>")
    stored = domain_xml.parse(xml).xml

    metadata = etree.fromstring(for_host(stored, PATHS, _disk_source)).find("metadata")

    ours = metadata.findall("{https://parallelvirtualcluster.org/xmlns/pvc/vm}vm")
    assert [dict(element.attrib) for element in ours] == [{"name": "m1",
                                                           "uuid": "11111111-2222-3333-4444-555555555555"}]
    assert metadata.findtext("{https://example.org/app}note") == "kept"
