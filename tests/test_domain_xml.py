"""Domain XML is read as a hostile document; what PVC takes from it is what a user sees in `vm info`.

A document may use only what PVC understands: anything that reaches the host, or that PVC does not know, is
refused in one line naming the element.
"""
import pytest
from lxml import etree

from pvc import domain_xml
from pvc.cli.localcluster.guest import domain_xml as guest_domain_xml
from pvc.errors import InvalidInput

from vm_support import new_uuid, vm_xml

DOMAIN = ("<domain type='kvm'><name>web1</name><memory unit='GiB'>2</memory><vcpu>2</vcpu>"
          "<os><type>hvm</type></os><devices>{disks}</devices></domain>")
VOLUME_DISK = "<disk type='volume'>{driver}<source pool='vms' volume='web1-root'/><target dev='vda'/></disk>"
DATA_DISK = "<disk type='volume'><source pool='vms' volume='web1-data'/><target dev='vdb'/></disk>"
RBD_DISK = ("<disk type='network'>{driver}<source protocol='rbd' name='vms/web1-data'/>"
            "<target dev='vdb'/></disk>")


def test_disks_on_pool_volumes_are_read_with_the_volumes_they_use():
    domain = domain_xml.parse(DOMAIN.format(disks=VOLUME_DISK.format(driver="<driver name='qemu' type='raw'/>")
                                            + DATA_DISK))
    assert domain.volumes == ["vms/web1-root", "vms/web1-data"]
    assert (domain.memory_mib, domain.vcpus) == (2048, 2)
    assert domain.uuid and f"<uuid>{domain.uuid}</uuid>" in domain.xml


@pytest.mark.parametrize("driver_type", ["qcow2", "vmdk"])
def test_a_pool_volume_opened_as_an_image_format_is_refused(driver_type):
    xml = DOMAIN.format(disks=VOLUME_DISK.format(driver=f"<driver name='qemu' type='{driver_type}'/>"))
    with pytest.raises(InvalidInput, match=f"as {driver_type}: PVC volumes hold raw images"):
        domain_xml.parse(xml)


def test_an_rbd_disk_naming_a_volume_directly_is_refused_with_the_volume_form():
    with pytest.raises(InvalidInput) as refused:
        domain_xml.parse(DOMAIN.format(disks=RBD_DISK.format(driver="")))
    assert str(refused.value).startswith("domain XML: <devices/disk type='network'> is refused")
    assert "<disk type='volume'><source pool='POOL' volume='VOLUME'/>" in str(refused.value)


def test_a_volume_name_that_climbs_out_of_its_pool_is_refused():
    xml = DOMAIN.format(disks="<disk type='volume'><source pool='vms' volume='../../etc/shadow'/>"
                              "<target dev='vda'/></disk>")
    with pytest.raises(InvalidInput, match="invalid volume name '../../etc/shadow'"):
        domain_xml.parse(xml)


def test_an_external_entity_is_refused_and_never_read(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("do-not-read")
    xml = (f'<?xml version="1.0"?><!DOCTYPE domain [<!ENTITY leak SYSTEM "file://{secret}">]>'
           "<domain type='kvm'><name>&leak;</name><memory>1024</memory><vcpu>1</vcpu></domain>")
    with pytest.raises(InvalidInput, match="DTD") as refused:
        domain_xml.parse(xml)
    assert "do-not-read" not in str(refused.value)


# -- what passes unchanged -----------------------------------------------------------------------------------

def canonical(xml: str) -> bytes:
    return etree.tostring(etree.fromstring(xml), method="c14n")


def without_uuid(xml: str, uuid: str) -> str:
    return xml.replace(f"<uuid>{uuid}</uuid>", "")


@pytest.mark.parametrize("xml", [
    guest_domain_xml("tiny", disk="vms/tiny-root"),
    guest_domain_xml("bare", domain_type="kvm"),
    vm_xml("test-driver"),
], ids=["pvc-local guest-xml", "guest-xml kvm without disk", "test driver"])
def test_the_xml_pvc_produces_passes_unchanged_but_for_its_new_uuid(xml):
    domain = domain_xml.parse(xml)
    assert canonical(without_uuid(domain.xml, domain.uuid)) == canonical(xml)


def test_a_document_with_its_uuid_passes_unchanged():
    xml = vm_xml("named", uuid=new_uuid())
    assert canonical(domain_xml.parse(xml).xml) == canonical(xml)


PRODUCTION_VM = """<domain type='kvm'>
  <name>db1</name>
  <description>a database server</description>
  <metadata><app:owner xmlns:app='https://example.org/app'>team-db</app:owner></metadata>
  <memory unit='GiB'>8</memory>
  <vcpu>4</vcpu>
  <cpu mode='host-passthrough'><topology sockets='1' cores='4' threads='1'/></cpu>
  <os firmware='efi'><type arch='x86_64' machine='q35'>hvm</type><loader secure='yes'/>
    <boot dev='hd'/><bootmenu enable='yes'/></os>
  <features><acpi/><apic/><smm state='on'/><hyperv mode='custom'><relaxed state='on'/></hyperv></features>
  <clock offset='utc'><timer name='rtc' tickpolicy='catchup'/></clock>
  <on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>restart</on_crash>
  <devices>
    <disk type='volume' device='disk'><driver name='qemu' type='raw' cache='none' discard='unmap'/>
      <source pool='vms' volume='db1-root'/><target dev='sda' bus='scsi'/><boot order='1'/></disk>
    <disk type='file' device='cdrom'><target dev='sdb' bus='scsi'/><readonly/></disk>
    <controller type='scsi' index='0' model='virtio-scsi'/>
    <interface type='bridge'><mac address='52:54:00:12:34:56'/><source bridge='vmbr100'/>
      <model type='virtio'/><mtu size='9000'/></interface>
    <interface type='network'><source network='default'/><model type='virtio'/></interface>
    <serial type='pty'><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <channel type='unix'><source mode='bind'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <graphics type='vnc' port='-1' autoport='yes'/>
    <video><model type='virtio' heads='1'/></video>
    <input type='tablet' bus='usb'/>
    <memballoon model='virtio'/>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>
  </devices>
</domain>"""


def test_an_ordinary_production_vm_passes_unchanged():
    domain = domain_xml.parse(PRODUCTION_VM)
    assert canonical(without_uuid(domain.xml, domain.uuid)) == canonical(PRODUCTION_VM)
    assert domain.volumes == ["vms/db1-root"]


# -- what is refused -----------------------------------------------------------------------------------------

HOSTILE = "<domain type='kvm' {namespaces}><name>evil</name><memory>1024</memory><vcpu>1</vcpu>{body}</domain>"
QEMU_NAMESPACE = "xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'"


def hostile(body: str, namespaces: str = "") -> str:
    return HOSTILE.format(body=body, namespaces=namespaces)


def devices(*elements: str) -> str:
    return "<os><type>hvm</type></os><devices>" + "".join(elements) + "</devices>"


REFUSED = {
    "a crash that dumps the guest's memory onto the host's disk": (
        "<os><type>hvm</type></os><on_crash>coredump-restart</on_crash>",
        "<on_crash>'coredump-restart'</on_crash> is refused: its text must be one of"),
    "a watchdog that dumps the guest's memory onto the host's disk": (
        devices("<watchdog model='i6300esb' action='dump'/>"),
        "<devices/watchdog action='dump'> is refused: action must be one of"),
    "a file disk naming a host path": (
        devices("<disk type='file'><source file='/etc/shadow'/><target dev='vda'/></disk>"),
        "<devices/disk/source file='/etc/shadow'> is refused: a disk names a PVC volume"),
    "a disk without a type (libvirt's file)": (
        devices("<disk><source file='/etc/shadow'/><target dev='vda'/></disk>"),
        "<devices/disk/source file='/etc/shadow'> is refused"),
    "a block disk naming a host device": (
        devices("<disk type='block'><source dev='/dev/sda'/><target dev='vda'/></disk>"),
        "<devices/disk/source dev='/dev/sda'> is refused: a disk names a PVC volume"),
    "a disk with a backing file": (
        devices("<disk type='volume'><source pool='vms' volume='v'/><backingStore type='file'>"
                "<source file='/etc/shadow'/></backingStore><target dev='vda'/></disk>"),
        "<devices/disk/backingStore type='file'> is refused: it names host paths"),
    "qemu:commandline": (
        "<qemu:commandline><qemu:arg value='-device'/></qemu:commandline>",
        "<qemu:commandline> is refused: elements outside libvirt's domain schema"),
    "qemu:capabilities": (
        "<qemu:capabilities><qemu:add capability='blockdev'/></qemu:capabilities>",
        "<qemu:capabilities> is refused: elements outside libvirt's domain schema"),
    "hostdev": (
        devices("<hostdev mode='subsystem' type='pci' managed='yes'><source>"
                "<address domain='0x0000' bus='0x03' slot='0x00' function='0x0'/></source></hostdev>"),
        "<devices/hostdev mode='subsystem' type='pci' managed='yes'> is refused: it passes a host device to the "
        "guest; an administrator can allow host devices with 'pvc cluster config --allow-host-devices'"),
    "a host filesystem share": (
        devices("<filesystem type='mount'><source dir='/'/><target dir='host'/></filesystem>"),
        "<devices/filesystem type='mount'> is refused: it shares a host directory"),
    "an ethernet interface with a script": (
        devices("<interface type='ethernet'><script path='/tmp/run-me'/></interface>"),
        "<devices/interface type='ethernet'> is refused: an interface joins a bridge"),
    "a script on a bridge interface": (
        devices("<interface type='bridge'><source bridge='br0'/><script path='/tmp/run-me'/></interface>"),
        "<devices/interface/script path='/tmp/run-me'> is refused: it runs a program on the host"),
    "a direct interface on a host NIC": (
        devices("<interface type='direct'><source dev='eth0' mode='bridge'/></interface>"),
        "<devices/interface type='direct'> is refused"),
    "a serial device writing to a host file": (
        devices("<serial type='file'><source path='/etc/cron.d/evil'/><target port='0'/></serial>"),
        "<devices/serial/source path='/etc/cron.d/evil'> is refused: the node decides where a serial device "
        "goes"),
    "a serial device on a host socket": (
        devices("<serial type='unix'><source mode='bind' path='/tmp/s'/></serial>"),
        "<devices/serial type='unix'> is refused: a serial device is a pty"),
    "a serial device on a TCP port": (
        devices("<serial type='tcp'><source mode='bind' host='0.0.0.0' service='2323'/></serial>"),
        "<devices/serial type='tcp'> is refused"),
    "a console writing to a host file": (
        devices("<console type='file'><source path='/root/.bashrc'/></console>"),
        "<devices/console/source path='/root/.bashrc'> is refused"),
    "a channel on a host socket path": (
        devices("<channel type='unix'><source mode='bind' path='/run/evil.sock'/>"
                "<target type='virtio' name='org.qemu.guest_agent.0'/></channel>"),
        "<devices/channel/source path='/run/evil.sock'> is refused: it names a host path"),
    "a parallel port writing to a host device": (
        devices("<parallel type='dev'><source path='/dev/parport0'/></parallel>"),
        "<devices/parallel type='dev'> is refused"),
    "a console log file": (
        devices("<serial type='pty'><log file='/etc/motd'/></serial>"),
        "<devices/serial/log file='/etc/motd'> is refused: it writes to a host file"),
    "graphics listening on an address": (
        devices("<graphics type='vnc' autoport='yes' listen='0.0.0.0'/>"),
        "<devices/graphics listen='0.0.0.0'> is refused: graphics listen where the node's libvirt listens"),
    "graphics with a listen element": (
        devices("<graphics type='spice' autoport='yes'><listen type='address' address='0.0.0.0'/></graphics>"),
        "<devices/graphics/listen type='address' address='0.0.0.0'> is refused"),
    "graphics on a host socket": (
        devices("<graphics type='vnc' socket='/tmp/vnc.sock'/>"),
        "<devices/graphics socket='/tmp/vnc.sock'> is refused: it names a host socket"),
    "graphics on a fixed port": (
        devices("<graphics type='vnc' port='5900' autoport='no'/>"),
        "<devices/graphics port='5900'> is refused: graphics ports are chosen by the node"),
    "a firmware loader path": (
        "<os><type>hvm</type><loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader></os>",
        "<os/loader>'/usr/share/OVMF/OVMF_CODE.fd'</loader> is refused: EFI firmware comes from the node"),
    "an NVRAM path": (
        "<os firmware='efi'><type>hvm</type><nvram>/var/lib/evil_VARS.fd</nvram></os>",
        "<os/nvram> is refused: NVRAM is kept by the node"),
    "an emulator": (
        devices("<emulator>/bin/sh</emulator>"),
        "<devices/emulator> is refused: it names a program on the host"),
    "a security label": (
        "<seclabel type='none'/>",
        "<seclabel type='none'> is refused: it changes how the host confines the guest"),
    "a security label on a disk": (
        devices("<disk type='volume'><source pool='vms' volume='v'><seclabel model='dac' relabel='no'/>"
                "</source><target dev='vda'/></disk>"),
        "<devices/disk/source/seclabel model='dac' relabel='no'> is refused"),
    "shared memory, an element PVC does not know": (
        devices("<shmem name='host-ivshmem'><model type='ivshmem-plain'/></shmem>"),
        "<devices/shmem name='host-ivshmem'> is refused: PVC does not know this element"),
    "an element nobody knows": (
        "<frobnicator/>",
        "<frobnicator> is refused: PVC does not know this element"),
    "an unknown attribute": (
        devices("<memballoon model='virtio' frob='1'/>"),
        "<devices/memballoon frob='1'> is refused: PVC does not know the attribute frob of <memballoon>"),
    "a domain type other than KVM": (
        "", "<domain type='lxc'> is refused: type must be one of: kvm, qemu, test"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_in_one_line_naming_the_element(case):
    body, message = REFUSED[case]
    xml = hostile(body, QEMU_NAMESPACE if "qemu:" in body else "")
    if case == "a domain type other than KVM":
        xml = xml.replace("type='kvm'", "type='lxc'", 1)
    with pytest.raises(InvalidInput) as refused:
        domain_xml.parse(xml)
    assert str(refused.value).startswith("domain XML: <")
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)


def test_a_value_with_a_newline_stays_on_one_line():
    with pytest.raises(InvalidInput) as refused:
        domain_xml.parse(hostile(devices("<disk type='file'><source file='/etc/\nshadow'/></disk>")))
    assert "\n" not in str(refused.value)


HOST_DEVICES = {
    "hostdev": REFUSED["hostdev"][0],
    "a file disk": REFUSED["a file disk naming a host path"][0],
    "a block disk": REFUSED["a block disk naming a host device"][0],
}


@pytest.mark.parametrize("case", sorted(HOST_DEVICES))
def test_host_devices_pass_when_the_cluster_allows_them(case):
    xml = hostile(HOST_DEVICES[case])
    with pytest.raises(InvalidInput, match="--allow-host-devices"):
        domain_xml.parse(xml)
    domain = domain_xml.parse(xml, allow_host_devices=True)
    assert canonical(without_uuid(domain.xml, domain.uuid)) == canonical(xml)


@pytest.mark.parametrize("case", ["qemu:commandline", "an ethernet interface with a script",
                                  "a serial device writing to a host file", "graphics listening on an address"])
def test_allowing_host_devices_allows_nothing_else(case):
    body, _ = REFUSED[case]
    with pytest.raises(InvalidInput, match="is refused"):
        domain_xml.parse(hostile(body, QEMU_NAMESPACE if "qemu:" in body else ""), allow_host_devices=True)


def test_an_empty_cdrom_names_no_host_path_and_passes():
    xml = hostile(devices("<disk type='file' device='cdrom'><target dev='hdc' bus='ide'/><readonly/></disk>"))
    assert domain_xml.parse(xml).disks[0]["source"] is None
