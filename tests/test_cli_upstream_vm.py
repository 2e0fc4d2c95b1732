"""The rest of upstream PVC's command lines, against a real two-node, two-coordinator local cluster: coordinator
states in node list, a forced live migration that will not fall back, --no-restart, vm info --format long, a
file volume that obeys allow_host_devices, and vm modify's -d/-c confirmations."""
import json

import pytest

from conftest import started_cluster
from helpers import eventually
from vm_support import pvc, vm_xml, wait_running_on


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    yield from started_cluster(tmp_path_factory.mktemp("upvm"), nodes=2, coordinators=2)


def ok(result) -> str:
    assert result.exit_code == 0, result.stderr + result.stdout
    return result.stdout


def error_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_node_list_shows_upstreams_coordinator_states(two):
    leader = two.client.cluster.status()["leader"]
    beside = {"pvcapid1": "hv1", "pvcapid2": "hv2"}[leader]
    assert ok(pvc(two, "node", "list", "-cs", "primary", "-f", "raw")).split() == [beside]
    assert ok(pvc(two, "node", "list", "-cs", "secondary", "-f", "raw")).split() == \
        [node for node in ("hv1", "hv2") if node != beside]
    assert ok(pvc(two, "node", "list", "-cs", "client", "-f", "raw")).split() == []
    assert json.loads(ok(pvc(two, "node", "info", beside, "-f", "json")))["coordinator_state"] == "primary"


def test_upstreams_vm_options(two, tmp_path):
    client = two.client
    client.vms.define(vm_xml("upvm"), target="hv1")
    client.vms.start("upvm", wait=True)
    wait_running_on(two, "upvm", "hv1")
    try:
        forced = error_line(pvc(two, "vm", "migrate", "upvm", "-t", "hv2", "--force-live", "--wait"))
        assert "live migration was forced (--force-live), but node hv1's hypervisor cannot migrate live" in forced, \
            "a test-driver node cannot migrate live: the forced move is refused, not done by shutting it down"
        assert eventually(lambda: client.vms.info("upvm")["node"] == "hv1", 20)
        wait_running_on(two, "upvm", "hv1")

        changed = ok(pvc(two, "vm", "vcpu", "set", "upvm", "2", "--no-restart", "--no-live"))
        assert "takes effect when the VM restarts" in changed

        long = ok(pvc(two, "vm", "info", "upvm", "--format", "long"))
        assert "Console log:" in long and "upvm.log on hv1" in long and "Node report:" in long
        assert "from hv1: running" in long

        host_file = tmp_path / "disk.raw"
        host_file.write_bytes(bytes(1 << 20))
        refused = pvc(two, "vm", "volume", "add", "upvm", str(host_file), "--type", "file")
        assert "pvc cluster config --allow-host-devices" in error_line(refused)
        assert client.vms.info("upvm")["disks"] == []
        client.cluster.config(allow_host_devices=True)
        ok(pvc(two, "vm", "volume", "add", "upvm", str(host_file), "--type", "file", "--no-live"))
        assert [disk["source"] for disk in client.vms.info("upvm")["disks"]] == [str(host_file)]
        ok(pvc(two, "vm", "volume", "remove", "upvm", str(host_file), "--no-live"))
        assert client.vms.info("upvm")["disks"] == []

        document = tmp_path / "upvm.xml"
        document.write_text(vm_xml("upvm", memory_mib=384, uuid=client.vms.info("upvm")["uuid"]))
        assert "not confirmed: Replace the domain XML of VM upvm" in \
            error_line(pvc(two, "vm", "modify", "upvm", str(document), "-r", "-c"))
        assert "not confirmed: Restart VM upvm" in error_line(pvc(two, "vm", "modify", "upvm", str(document),
                                                                  "-r", "-d"))
        assert client.vms.info("upvm")["memory_mib"] == 512
        ok(pvc(two, "vm", "modify", "upvm", str(document), "-d"))
        assert client.vms.info("upvm")["memory_mib"] == 384
    finally:
        client.cluster.config(allow_host_devices=False)
        client.vms.remove("upvm", wait=True)
