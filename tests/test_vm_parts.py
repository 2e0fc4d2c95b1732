"""Changing one part of a VM through the CLI, as an administrator used to upstream PVC does it: vCPUs, memory,
volumes and NICs, `vm modify --editor`, and `vm undefine` beside `vm remove`.

What changed is read where a user reads it (`vm dump`, `vm ... get`) and, for a running VM, from its host's
own libvirtd: "applied live" must be true there, and a change that waits for a restart must not be.
"""
import json
import os
import pty
import select
import stat
import subprocess
import sys
import time
from pathlib import Path

import libvirt
import pytest

from pvc import domain_edit, domain_xml

from helpers import eventually
from vm_support import pvc, remove_all_vms, vm_xml, wait_running_on


@pytest.fixture(autouse=True)
def no_vms_left(cluster):
    yield
    remove_all_vms(cluster)


@pytest.fixture(scope="module")
def pool(cluster):
    cluster.client.storage.pool_add("parts")
    yield "parts"
    cluster.client.storage.pool_remove("parts", True)


def ok(result) -> str:
    assert result.exit_code == 0, result.output
    return result.stdout


def refused(result, message: str) -> None:
    """A one-line error naming what is wrong."""
    assert result.exit_code != 0, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def live_domain(cluster, node: str, vm: str) -> tuple[int, int]:
    """(vCPUs, memory MiB) of the running guest, as the host's libvirtd has it."""
    connection = libvirt.open(cluster.local.host(node).uri)
    try:
        _state, _max_kib, memory_kib, vcpus, _cpu_time = connection.lookupByName(vm).info()
        return vcpus, memory_kib // 1024
    finally:
        connection.close()


def test_vcpus_and_memory_of_a_stopped_vm_change_its_definition(cluster):
    cluster.client.vms.define(vm_xml("sized", memory_mib=512, vcpus=1), target="hv1")

    assert ok(pvc(cluster, "vm", "vcpu", "set", "sized", "3")).strip() == \
        "VM sized: vCPUs set to 3; it takes effect when the VM starts"
    assert ok(pvc(cluster, "vm", "memory", "set", "sized", "1G")).strip() == \
        "VM sized: memory set to 1024 MiB; it takes effect when the VM starts"

    dumped = ok(pvc(cluster, "vm", "dump", "sized"))
    assert "<vcpu>3</vcpu>" in dumped and '<memory unit="MiB">1024</memory>' in dumped
    assert json.loads(ok(pvc(cluster, "vm", "vcpu", "get", "sized", "--format", "json"))) == \
        {"name": "sized", "vcpus": 3}
    assert ok(pvc(cluster, "vm", "memory", "get", "sized")).strip() == "1.0G"
    assert ok(pvc(cluster, "vm", "memory", "set", "sized", "768")).strip().startswith(
        "VM sized: memory set to 768 MiB"), "a bare number is MiB, as upstream reads it"

    cluster.client.vms.start("sized", wait=True)
    assert live_domain(cluster, "hv1", "sized") == (3, 768)


def test_a_running_vm_gets_a_change_live_where_libvirt_can_and_otherwise_at_its_restart(cluster):
    vms = cluster.client.vms
    vms.define(vm_xml("busy", memory_mib=1024, vcpus=2), target="hv2")
    vms.start("busy", wait=True)

    assert ok(pvc(cluster, "vm", "vcpu", "set", "busy", "1")).strip() == "VM busy: vCPUs set to 1; applied live"
    assert live_domain(cluster, "hv2", "busy")[0] == 1
    assert ok(pvc(cluster, "vm", "memory", "set", "busy", "512")).strip().endswith("applied live")
    assert live_domain(cluster, "hv2", "busy")[1] == 512

    beyond = ok(pvc(cluster, "vm", "vcpu", "set", "busy", "4"))
    assert beyond.startswith("VM busy: vCPUs set to 4; it takes effect when the VM restarts (not applied live: ")
    assert live_domain(cluster, "hv2", "busy")[0] == 1, "more vCPUs than the guest started with wait"
    assert "<vcpu>4</vcpu>" in ok(pvc(cluster, "vm", "dump", "busy"))

    not_asked = pvc(cluster, "vm", "vcpu", "set", "busy", "2", "--restart")
    assert not_asked.exit_code == 1 and "no terminal" in not_asked.output
    assert "<vcpu>4</vcpu>" in ok(pvc(cluster, "vm", "dump", "busy")), "nothing changed without a yes"

    restarted = json.loads(ok(pvc(cluster, "vm", "vcpu", "set", "busy", "2", "--restart", "--yes",
                                  "--format", "json")))
    assert restarted == {"name": "busy", "change": "vCPUs set to 2", "applied": "restarting", "reason": None}
    assert eventually(lambda: vms.info("busy")["state"] == "start" and vms.info("busy")["running"], 15)
    wait_running_on(cluster, "busy", "hv2")
    assert eventually(lambda: live_domain(cluster, "hv2", "busy") == (2, 512), 15)


def test_volumes_are_attached_and_detached_by_name(cluster, pool):
    vms, storage = cluster.client.vms, cluster.client.storage
    storage.volume_add(pool, "data", "16M")
    vms.define(vm_xml("holder"), target="hv3")

    assert ok(pvc(cluster, "vm", "volume", "add", "holder", f"{pool}/data", "--bus", "virtio")).strip() == \
        f"VM holder: volume {pool}/data attached; it takes effect when the VM starts"
    assert f'<source pool="{pool}" volume="data"/><target dev="vda" bus="virtio"/>' in \
        ok(pvc(cluster, "vm", "dump", "holder"))
    assert json.loads(ok(pvc(cluster, "vm", "volume", "get", "holder", "--format", "json"))) == \
        [{"target": "vda", "volume": f"{pool}/data", "device": "disk"}]
    assert storage.volume_info(pool, "data")["used_by"] == ["holder"]
    vms.define(vm_xml("other"), target="hv3")
    refused(pvc(cluster, "vm", "volume", "add", "other", f"{pool}/data"),
            f"volume {pool}/data is used by VM(s) holder: two guests writing one volume corrupt it")
    assert "<disk" not in ok(pvc(cluster, "vm", "dump", "other"))

    vms.start("holder", wait=True)
    detached = ok(pvc(cluster, "vm", "volume", "remove", "holder", f"{pool}/data"))
    assert detached.strip() == (f"VM holder: volume {pool}/data detached; it takes effect when the VM restarts "
                                "(PVC attaches and detaches volumes when the VM starts)")
    assert "<disk" not in ok(pvc(cluster, "vm", "dump", "holder"))
    assert storage.volume_info(pool, "data")["used_by"] == [], "the volume itself is kept"


def test_nics_are_added_with_a_generated_or_given_mac_and_removed_by_mac_or_network(cluster):
    vms = cluster.client.vms
    vms.define(vm_xml("wired"), target="hv1")

    ok(pvc(cluster, "vm", "network", "add", "wired", "br-lan"))
    ok(pvc(cluster, "vm", "network", "add", "wired", "br-wan", "--model", "e1000", "-a", "52:54:00:AA:BB:CC"))
    nics = json.loads(ok(pvc(cluster, "vm", "network", "get", "wired", "--format", "json")))
    assert [(nic["type"], nic["source"], nic["model"]) for nic in nics] == \
        [("bridge", "br-lan", "virtio"), ("bridge", "br-wan", "e1000")]
    assert nics[0]["mac"].startswith("52:54:00:") and nics[1]["mac"] == "52:54:00:aa:bb:cc"
    assert '<interface type="bridge"><mac address="' + nics[0]["mac"] in ok(pvc(cluster, "vm", "dump", "wired"))

    vms.start("wired", wait=True)
    removed = ok(pvc(cluster, "vm", "network", "remove", "wired", "-m", "52:54:00:aa:bb:cc"))
    assert removed.startswith("VM wired: interface 52:54:00:aa:bb:cc removed; it takes effect when the VM "
                              "restarts (not applied live: "), "the test driver hot-plugs nothing, and says so"
    ok(pvc(cluster, "vm", "network", "remove", "wired", "br-lan", "--no-live"))
    assert "<interface" not in ok(pvc(cluster, "vm", "dump", "wired"))


def test_every_edit_leaves_a_document_the_allowlist_accepts():
    xml = ("<domain type='kvm'><name>shape</name><memory unit='GiB'>2</memory><currentMemory unit='GiB'>1"
           "</currentMemory><vcpu current='2'>4</vcpu><cpu><topology sockets='1' cores='2' threads='2'/></cpu>"
           "<os><type>hvm</type></os><devices/></domain>")
    kept_topology = domain_edit.set_vcpus(xml, 4).xml
    assert "<topology" in kept_topology and "current=" not in kept_topology
    edited = domain_edit.set_vcpus(xml, 3).xml
    assert "<topology" not in edited, "a topology that no longer multiplies out to the count goes"
    edited = domain_edit.set_memory(edited, 3072).xml
    edited = domain_edit.add_volume(edited, "pool/disk", bus="virtio").xml
    edited = domain_edit.add_nic(edited, "default", kind="network", model="e1000").xml

    domain = domain_xml.parse(edited)
    assert (domain.vcpus, domain.memory_mib, domain.volumes) == (3, 3072, ["pool/disk"])
    assert '<currentMemory unit="MiB">3072</currentMemory>' in edited
    assert domain_xml.parse(domain_edit.remove_nic(domain_edit.remove_volume(edited, "pool/disk").xml,
                                                   source="default").xml).nics == []


@pytest.mark.parametrize("command, message", [
    (["volume", "add", "steady", "parts/missing"], "no volume parts/missing in PVC storage"),
    (["volume", "add", "steady", "no-pool-given"], "a volume is named POOL/VOLUME, not 'no-pool-given'"),
    (["volume", "remove", "steady", "parts/missing"], "volume parts/missing is not attached to this VM"),
    (["vcpu", "set", "steady", "0"], "vCPUs must be a whole number from 1 to 1024, not 0"),
    (["memory", "set", "steady", "lots"], "invalid memory 'lots'"),
    (["network", "add", "steady", "br0", "-a", "52:54:00:zz:00:01"], "invalid MAC address '52:54:00:zz:00:01'"),
    (["network", "add", "steady", "br0", "-a", "01:00:5e:00:00:01"], "it is a multicast address"),
    (["network", "remove", "steady", "br9"], "this VM has no interface br9"),
    (["vcpu", "set", "ghost", "2"], "no VM named 'ghost'"),
])
def test_bad_input_is_one_line_and_changes_nothing(cluster, pool, command, message):
    cluster.client.vms.define(vm_xml("steady", memory_mib=512, vcpus=2), target="hv2")
    before = ok(pvc(cluster, "vm", "dump", "steady"))

    refused(pvc(cluster, "vm", *command), message)

    assert ok(pvc(cluster, "vm", "dump", "steady")) == before


def _editor(tmp_path, name: str, script: str) -> str:
    path = tmp_path / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_modify_editor_shows_a_diff_and_applies_only_what_is_confirmed(cluster, tmp_path, monkeypatch):
    cluster.client.vms.define(vm_xml("edited", vcpus=1), target="hv3")
    original = ok(pvc(cluster, "vm", "dump", "edited"))

    monkeypatch.setenv("EDITOR", _editor(tmp_path, "untouched", "touch \"$1\""))
    unchanged = pvc(cluster, "vm", "modify", "edited", "--editor")
    assert unchanged.exit_code == 0 and "no changes; nothing applied" in unchanged.stdout

    monkeypatch.setenv("EDITOR", _editor(tmp_path, "more-cpus", "sed -i 's|<vcpu>1</vcpu>|<vcpu>6</vcpu>|' \"$1\""))
    unasked = pvc(cluster, "vm", "modify", "edited", "--editor")
    assert unasked.exit_code == 1 and "-  <vcpu>1</vcpu>\n+  <vcpu>6</vcpu>" in unasked.stdout
    assert "no terminal" in unasked.stderr
    assert ok(pvc(cluster, "vm", "dump", "edited")) == original, "nothing applied without a yes"

    applied = pvc(cluster, "vm", "modify", "edited", "--editor", "--yes", "--format", "json")
    assert applied.exit_code == 0, applied.output
    assert json.loads(applied.stdout[applied.stdout.index("{"):])["vcpus"] == 6
    assert "<vcpu>6</vcpu>" in ok(pvc(cluster, "vm", "dump", "edited"))

    neither = pvc(cluster, "vm", "modify", "edited")
    assert neither.exit_code == 2 and "Error: give either XML_FILE or --editor" in neither.stderr


def answered_on_a_terminal(cluster, editor: str, args: list[str], question: str, answer: str) -> tuple[int, str]:
    """`pvc ARGS` on a real pseudo-terminal: wait for `question`, type `answer`; its exit code and screen."""
    main, secondary = pty.openpty()
    environment = {key: value for key, value in os.environ.items() if key not in ("PVC_URI", "PVC_API_KEY")}
    process = subprocess.Popen([str(Path(sys.executable).with_name("pvc")), *args], stdin=secondary,
                               stdout=secondary, stderr=secondary, close_fds=True,
                               env={**environment, "PVC_CONFIG": str(cluster.local.client_config), "EDITOR": editor})
    os.close(secondary)
    screen, deadline = "", time.monotonic() + 60
    try:
        while question not in screen and time.monotonic() < deadline and process.poll() is None:
            if select.select([main], [], [], 0.5)[0]:
                screen += os.read(main, 4096).decode(errors="replace")
        assert question in screen, screen
        os.write(main, answer.encode())
        code = process.wait(60)
        while select.select([main], [], [], 0.1)[0]:
            screen += os.read(main, 4096).decode(errors="replace")
    except OSError:
        code = process.wait(60)
    finally:
        os.close(main)
    return code, screen


def test_modify_editor_declined_on_a_terminal_applies_nothing(cluster, tmp_path):
    cluster.client.vms.define(vm_xml("declined", vcpus=1), target="hv1")
    original = ok(pvc(cluster, "vm", "dump", "declined"))
    editor = _editor(tmp_path, "more-cpus", "sed -i 's|<vcpu>1</vcpu>|<vcpu>2</vcpu>|' \"$1\"")

    code, screen = answered_on_a_terminal(cluster, editor, ["vm", "modify", "declined", "--editor"],
                                          "Apply these changes to VM declined [y/N]: ", "n\n")

    assert code == 1 and "+  <vcpu>2</vcpu>" in screen and "Aborted!" in screen
    assert ok(pvc(cluster, "vm", "dump", "declined")) == original


def test_undefine_keeps_the_volumes_and_remove_removes_them(cluster, pool):
    vms, storage = cluster.client.vms, cluster.client.storage
    for vm in ("kept", "gone"):
        storage.volume_add(pool, f"{vm}-disk", "8M")
        vms.define(vm_xml(vm), target="hv1")
        vms.add_volume(vm, f"{pool}/{vm}-disk")

    assert ok(pvc(cluster, "vm", "undefine", "kept", "--yes", "--wait")).strip() == "removed VM kept"
    assert storage.volume_info(pool, "kept-disk")["used_by"] == []

    assert pvc(cluster, "vm", "remove", "gone").exit_code == 1, "remove asks first"
    assert ok(pvc(cluster, "vm", "remove", "gone", "--yes")).splitlines() == \
        ["removed VM gone", f"removed volume {pool}/gone-disk"]
    assert [vm["name"] for vm in vms.list()] == []
    names = {volume["name"] for volume in storage.volume_list(pool)}
    assert "kept-disk" in names and "gone-disk" not in names
