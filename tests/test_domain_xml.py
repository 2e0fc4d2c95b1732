"""Domain XML is read as a hostile document; what PVC takes from it is what a user sees in `vm info`."""
import pytest

from pvc import domain_xml
from pvc.errors import InvalidInput

DOMAIN = ("<domain type='kvm'><name>web1</name><memory unit='GiB'>2</memory><vcpu>2</vcpu>"
          "<os><type>hvm</type></os><devices>{disks}</devices></domain>")
VOLUME_DISK = "<disk type='volume'>{driver}<source pool='vms' volume='web1-root'/><target dev='vda'/></disk>"
RBD_DISK = ("<disk type='network'>{driver}<source protocol='rbd' name='vms/web1-data'/>"
            "<target dev='vdb'/></disk>")


def test_disks_on_pool_volumes_are_read_with_the_volumes_they_use():
    domain = domain_xml.parse(DOMAIN.format(disks=VOLUME_DISK.format(driver="<driver name='qemu' type='raw'/>")
                                            + RBD_DISK.format(driver="")))
    assert domain.volumes == ["vms/web1-root", "vms/web1-data"]
    assert (domain.memory_mib, domain.vcpus) == (2048, 2)
    assert domain.uuid and f"<uuid>{domain.uuid}</uuid>" in domain.xml


@pytest.mark.parametrize("disk", [VOLUME_DISK, RBD_DISK])
@pytest.mark.parametrize("driver_type", ["qcow2", "vmdk"])
def test_a_pool_volume_opened_as_an_image_format_is_refused(disk, driver_type):
    xml = DOMAIN.format(disks=disk.format(driver=f"<driver name='qemu' type='{driver_type}'/>"))
    with pytest.raises(InvalidInput, match=f"as {driver_type}: PVC volumes hold raw images"):
        domain_xml.parse(xml)


def test_an_external_entity_is_refused_and_never_read(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("do-not-read")
    xml = (f'<?xml version="1.0"?><!DOCTYPE domain [<!ENTITY leak SYSTEM "file://{secret}">]>'
           "<domain type='kvm'><name>&leak;</name><memory>1024</memory><vcpu>1</vcpu></domain>")
    with pytest.raises(InvalidInput, match="DTD") as refused:
        domain_xml.parse(xml)
    assert "do-not-read" not in str(refused.value)
