"""Bad input to `pvc vm`: each is refused with a one-line error, and nothing is recorded or changed.

One VM, `resident` (on hv1, limited to hv1 and hv2, running), is there throughout; after every refusal the VM
list, the VM and UUID records in ZooKeeper and what each host runs are exactly as before.
"""
import time

import pytest
from kazoo.client import KazooClient

from pvc import schema

from helpers import cluster_store, eventually
from vm_support import new_uuid, pvc, remove_all_vms, running_hosts, vm_xml, wait_running_on

RESIDENT_UUID = new_uuid()
GOOD = vm_xml("newcomer")


@pytest.fixture(scope="module", autouse=True)
def resident(cluster):
    cluster.client.vms.define(vm_xml("resident", uuid=RESIDENT_UUID), target="hv1", node_limit=["hv1", "hv2"])
    cluster.client.vms.start("resident", wait=True)
    wait_running_on(cluster, "resident", "hv1")
    yield
    remove_all_vms(cluster)


def recorded(cluster) -> dict:
    """What a refused command must not change: the VM list, ZooKeeper's VM records, and the hosts."""
    with cluster_store(cluster.local) as store:
        znodes = {path: store.children(path) for path in (schema.VMS, schema.VM_UUIDS, schema.VM_LOCKS)}
        znodes["resident"] = (store.read(schema.vm("resident")), store.read(schema.vm_key("resident", "state")),
                              store.read(schema.vm_key("resident", "placement")))
    return {"list": cluster.client.vms.list(), "znodes": znodes, "running": running_hosts(cluster)}


def assert_refused_in_one_line(result, *expected: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for text in expected:
        assert text in lines[0], lines[0]


DEFINE_CASES = {
    "malformed XML": ("<domain type='test'><name>broken</name><memory>1", [], "malformed domain XML"),
    "a DTD with an external entity": (
        "<!DOCTYPE domain [<!ENTITY secret SYSTEM 'file:///etc/passwd'>]>"
        "<domain type='test'><name>&secret;</name><memory unit='MiB'>512</memory><vcpu>1</vcpu>"
        "<os><type>hvm</type></os></domain>", [], "must not contain a DTD"),
    "a DTD alone": ("<!DOCTYPE domain SYSTEM 'http://127.0.0.1:9/domain.dtd'>" + GOOD, [], "must not contain a DTD"),
    "a domain without a name": ("<domain type='test'><memory unit='MiB'>512</memory><vcpu>1</vcpu></domain>", [],
                                "has no <name>"),
    "a duplicate name": (vm_xml("resident"), [], "'resident' exists already"),
    "a duplicate UUID": (vm_xml("twin", uuid=RESIDENT_UUID), [], f"UUID {RESIDENT_UUID} exists already"),
    "an unknown target node": (GOOD, ["--target", "hv9"], "no node named 'hv9'"),
    "an unknown selector": (GOOD, ["--node-selector", "cheapest"], "unknown migration selector 'cheapest'"),
    "a node limit naming an unknown node": (GOOD, ["--node-limit", "hv1,hv9"], "no node named 'hv9'"),
    "a target outside the limit": (GOOD, ["--target", "hv3", "--node-limit", "hv1,hv2"],
                                   "outside the node limit"),
}


@pytest.mark.parametrize("case", sorted(DEFINE_CASES))
def test_vm_define_refuses(cluster, tmp_path, case):
    xml, options, message = DEFINE_CASES[case]
    xml_file = tmp_path / "domain.xml"
    xml_file.write_text(xml)
    before = recorded(cluster)

    result = pvc(cluster, "vm", "define", str(xml_file), *options)

    assert_refused_in_one_line(result, message)
    assert recorded(cluster) == before


def test_the_python_api_refuses_the_same_way(cluster):
    from pvc.errors import AlreadyExists, InvalidInput, NotFound
    before = recorded(cluster)
    with pytest.raises(InvalidInput, match="DTD"):
        cluster.client.vms.define(DEFINE_CASES["a DTD with an external entity"][0])
    with pytest.raises(AlreadyExists):
        cluster.client.vms.define(vm_xml("twin", uuid=RESIDENT_UUID))
    with pytest.raises(NotFound, match="unknown migration selector"):
        cluster.client.vms.define(GOOD, node_selector="cheapest")
    assert recorded(cluster) == before


def test_a_migration_outside_the_limit_needs_ignore_limit(cluster):
    before = recorded(cluster)

    refused = pvc(cluster, "vm", "migrate", "resident", "--target", "hv3")

    assert_refused_in_one_line(refused, "outside", "node limit", "--ignore-limit")
    assert recorded(cluster) == before
    wait_running_on(cluster, "resident", "hv1")

    forced = pvc(cluster, "vm", "migrate", "resident", "--target", "hv3", "--ignore-limit", "--wait")
    assert forced.exit_code == 0, forced.output
    wait_running_on(cluster, "resident", "hv3")
    back = pvc(cluster, "vm", "unmigrate", "resident", "--wait")
    assert back.exit_code == 0, back.output
    wait_running_on(cluster, "resident", "hv1")
    assert eventually(lambda: cluster.client.vms.info("resident")["state"] == "start", 5), \
        "the leader records the finished move as start"


@pytest.mark.parametrize("options, message", [
    (["--node-selector", "cheapest"], "unknown migration selector 'cheapest'"),
    (["--node-limit", "hv2,hv9"], "no node named 'hv9'"),
])
def test_vm_meta_refuses_an_unknown_selector_or_node(cluster, options, message):
    before = recorded(cluster)

    assert_refused_in_one_line(pvc(cluster, "vm", "meta", "resident", *options), message)
    assert recorded(cluster) == before


@pytest.mark.parametrize("command", [
    ["info"], ["dump"], ["start"], ["shutdown", "--yes"], ["stop", "--yes"], ["restart", "--yes"],
    ["disable", "--yes"], ["remove", "--yes"],
    ["migrate"], ["unmigrate"], ["move", "--target", "hv2"], ["rename", "ghost2"], ["meta", "--node-selector", "vms"],
])
def test_a_command_on_an_unknown_vm(cluster, command):
    before = recorded(cluster)

    result = pvc(cluster, "vm", command[0], "ghost", *command[1:])

    assert_refused_in_one_line(result, "no VM named 'ghost'")
    assert recorded(cluster) == before


def test_a_vm_whose_lock_another_holder_keeps_is_busy(cluster):
    state = cluster.local.state
    holder = KazooClient(hosts=f"127.0.0.1:{state['zookeeper_port']}",
                         auth_data=[("digest", f"pvc:{state['zookeeper_password']}")])
    holder.start(timeout=10)
    lock = holder.Lock(schema.vm_lock("resident"), "another admin")
    assert lock.acquire(timeout=5)
    try:
        before = recorded(cluster)
        started = time.monotonic()

        result = pvc(cluster, "vm", "shutdown", "resident", "--yes")

        assert_refused_in_one_line(result, "VM 'resident' is busy")
        assert time.monotonic() - started < 10
        assert recorded(cluster) == before
    finally:
        lock.release()
        holder.stop()
        holder.close()
    assert pvc(cluster, "vm", "meta", "resident", "--node-selector", "vms").exit_code == 0, \
        "once the holder lets go, commands go through"
