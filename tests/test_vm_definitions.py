"""An API key is not root on every hypervisor: `pvc vm define` and `pvc vm modify` refuse a domain that reaches
the host, in one line naming the element, and record nothing; an administrator may allow host devices.

One VM, `keeper`, is defined throughout; after every refusal the VM list, the VM and UUID records in ZooKeeper,
`keeper`'s stored XML and what each host holds are exactly as before.
"""
import json

import pytest

from pvc import schema
from pvc.errors import InvalidInput

from helpers import cluster_store
from vm_support import pvc, remove_all_vms, vm_xml

EVIL = ("<domain type='test'{namespaces}><name>{name}</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>"
        "<os><type>hvm</type></os>{body}</domain>")
HOSTDEV = ("<devices><hostdev mode='subsystem' type='pci' managed='yes'><source>"
           "<address domain='0x0000' bus='0x03' slot='0x00' function='0x0'/></source></hostdev></devices>")

REFUSED = {
    "a disk naming a host file": (
        "<devices><disk type='file'><source file='/etc/shadow'/><target dev='vda'/></disk></devices>",
        "<devices/disk/source file='/etc/shadow'> is refused"),
    "qemu:commandline": (
        "<qemu:commandline><qemu:arg value='-chardev'/></qemu:commandline>",
        "<qemu:commandline> is refused"),
    "a hostdev": (HOSTDEV, "<devices/hostdev mode='subsystem' type='pci' managed='yes'> is refused"),
    "an unknown element (shmem)": (
        "<devices><shmem name='ivshmem'/></devices>", "<devices/shmem name='ivshmem'> is refused"),
    "a serial device writing to a host file": (
        "<devices><serial type='file'><source path='/etc/motd'/></serial></devices>",
        "<devices/serial/source path='/etc/motd'> is refused"),
}


def evil(name: str, body: str) -> str:
    namespaces = " xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'" if "qemu:" in body else ""
    return EVIL.format(name=name, body=body, namespaces=namespaces)


@pytest.fixture(scope="module", autouse=True)
def keeper(cluster):
    cluster.client.vms.define(vm_xml("keeper"), target="hv1")
    yield
    cluster.client.cluster.config(allow_host_devices=False)
    remove_all_vms(cluster)


def recorded(cluster) -> dict:
    with cluster_store(cluster.local) as store:
        znodes = {path: store.children(path) for path in (schema.VMS, schema.VM_UUIDS)}
        znodes["keeper"] = store.read(schema.vm("keeper"))
    hosts = {node: sorted(cluster.host_domains(node)) for node in cluster.local.node_names}
    return {"list": cluster.client.vms.list(), "znodes": znodes, "hosts": hosts}


def assert_refused_in_one_line(result, expected: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: domain XML: "), result.stderr
    assert expected in lines[0], lines[0]


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_refused_define_records_nothing(cluster, tmp_path, case):
    body, message = REFUSED[case]
    xml_file = tmp_path / "evil.xml"
    xml_file.write_text(evil("evil", body))
    before = recorded(cluster)

    result = pvc(cluster, "vm", "define", str(xml_file))

    assert_refused_in_one_line(result, message)
    assert recorded(cluster) == before


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_refused_modify_changes_nothing(cluster, tmp_path, case):
    body, message = REFUSED[case]
    xml_file = tmp_path / "keeper.xml"
    xml_file.write_text(evil("keeper", body))
    before = recorded(cluster)

    result = pvc(cluster, "vm", "modify", "keeper", str(xml_file), "--yes")

    assert_refused_in_one_line(result, message)
    assert recorded(cluster) == before


def test_an_administrator_allows_host_devices(cluster, tmp_path):
    shown = pvc(cluster, "cluster", "config", "--format", "json")
    assert json.loads(shown.output)["allow_host_devices"] is False

    allowed = pvc(cluster, "cluster", "config", "--allow-host-devices", "--format", "json")
    assert allowed.exit_code == 0, allowed.output
    assert json.loads(allowed.output)["allow_host_devices"] is True
    try:
        cluster.client.vms.define(evil("passthrough", HOSTDEV), target="hv2")
        assert "<hostdev" in cluster.client.vms.dump("passthrough")
        with pytest.raises(InvalidInput, match="<qemu:commandline> is refused"):
            cluster.client.vms.define(evil("still-evil", REFUSED["qemu:commandline"][0]))
    finally:
        refused = pvc(cluster, "cluster", "config", "--no-allow-host-devices", "--format", "json")
    assert json.loads(refused.output)["allow_host_devices"] is False

    xml_file = tmp_path / "passthrough.xml"
    xml_file.write_text(cluster.client.vms.dump("passthrough"))
    before = recorded(cluster)
    assert_refused_in_one_line(pvc(cluster, "vm", "modify", "passthrough", str(xml_file), "-y"),
                               "<devices/hostdev mode='subsystem' type='pci' managed='yes'> is refused")
    assert recorded(cluster) == before
    cluster.client.vms.remove("passthrough")


def test_the_setting_is_a_boolean(cluster):
    with pytest.raises(InvalidInput, match="allow_host_devices must be true or false"):
        cluster.client.cluster.config(allow_host_devices="yes")
