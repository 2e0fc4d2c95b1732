"""Virtual machines on a 3-node local cluster, as an administrator uses them through the Python API and the CLI.

"Running on a node" is always read from that node's own libvirtd (`host_domains`), and after every operation
no VM may run on two hosts. Each test removes the VMs it made.
"""
import json

import pytest

from pvc import schema

from helpers import cluster_store, eventually
from vm_support import (assert_no_vm_on_two_hosts, new_uuid, pvc, remove_all_vms, running_hosts, vm_xml,
                        wait_for_task, wait_gone, wait_host_has, wait_running_on)

INFO_KEYS = {"name", "uuid", "state", "node", "last_node", "running", "node_limit", "node_selector",
             "node_autostart", "migration_method", "max_downtime_ms", "vcpus", "memory_mib", "last_error",
             "unknown", "migration_note", "disks", "nics", "volumes", "autostart_pending", "tags", "protected_tags",
             "profile", "made_from"}


@pytest.fixture(autouse=True)
def no_vms_left(cluster):
    yield
    remove_all_vms(cluster)


def test_a_vm_defined_on_a_node_is_started_shut_down_stopped_restarted_disabled_and_removed(cluster):
    vms = cluster.client.vms
    uuid = new_uuid()

    defined = vms.define(vm_xml("life", memory_mib=1024, vcpus=2, uuid=uuid), target="hv2")

    assert (defined["name"], defined["uuid"], defined["node"], defined["state"]) == ("life", uuid, "hv2", "stop")
    wait_host_has(cluster, "hv2", {"life": False})
    assert "life" not in cluster.host_domains("hv1") and "life" not in cluster.host_domains("hv3")

    started = vms.start("life", wait=True)
    assert started["state"] == "start" and started["running"] is True
    wait_running_on(cluster, "life", "hv2")

    assert vms.shutdown("life", wait=True)["state"] == "shutdown"
    wait_running_on(cluster, "life", None)
    assert cluster.host_domains("hv2") == {"life": False}

    vms.start("life", wait=True)
    wait_running_on(cluster, "life", "hv2")
    assert vms.stop("life", wait=True)["running"] is False
    wait_running_on(cluster, "life", None)

    vms.start("life", wait=True)
    assert vms.restart("life", wait=True)["running"] is True
    wait_running_on(cluster, "life", "hv2")
    assert vms.info("life")["state"] == "start", "a restart ends as start"

    disabled = vms.disable("life", wait=True)
    assert (disabled["state"], disabled["running"]) == ("disable", False)
    wait_running_on(cluster, "life", None)

    vms.start("life", wait=True)
    assert vms.remove("life") == {"name": "life", "removed": True}
    assert [vm["name"] for vm in vms.list()] == []
    wait_gone(cluster, "life")
    with cluster_store(cluster.local) as store:
        assert store.zk.exists(schema.vm_lock("life")) is None and store.children(schema.VM_UUIDS) == [], \
            "nothing of the VM is left in ZooKeeper"


def test_info_dump_and_list_show_the_vm_as_design_says(cluster):
    vms = cluster.client.vms
    uuid = new_uuid()
    vms.define(vm_xml("shown", memory_mib=2048, vcpus=4, uuid=uuid), target="hv1", node_limit=["hv1", "hv3"],
               node_selector="vcpus", node_autostart=True, migration_method="shutdown", max_downtime=250)
    vms.start("shown", wait=True)

    info = vms.info("shown")
    assert set(info) == INFO_KEYS
    assert info == {**info, "name": "shown", "uuid": uuid, "state": "start", "node": "hv1", "last_node": None,
                    "running": True, "node_limit": ["hv1", "hv3"], "node_selector": "vcpus",
                    "node_autostart": True, "migration_method": "shutdown", "max_downtime_ms": 250, "vcpus": 4,
                    "memory_mib": 2048, "last_error": None}

    dumped = vms.dump("shown")
    assert "<name>shown</name>" in dumped and f"<uuid>{uuid}</uuid>" in dumped

    listed = vms.list()
    assert [vm["name"] for vm in listed] == ["shown"]
    assert {key: listed[0][key] for key in ("name", "state", "node", "memory_mib")} == \
        {"name": "shown", "state": "start", "node": "hv1", "memory_mib": 2048}
    assert vms.list(node="hv2") == [] and [vm["name"] for vm in vms.list(node="hv1")] == ["shown"]
    assert vms.list(state="stop") == [] and len(vms.list(state="start")) == 1
    assert_no_vm_on_two_hosts(cluster)


def test_the_cli_defines_starts_lists_shows_stops_with_confirmation_and_removes(cluster, tmp_path):
    xml_file = tmp_path / "cli-vm.xml"
    xml_file.write_text(vm_xml("cli-vm", memory_mib=768))

    defined = pvc(cluster, "vm", "define", str(xml_file), "--target", "hv3", "--format", "json")
    assert defined.exit_code == 0, defined.output
    assert json.loads(defined.stdout)["node"] == "hv3"

    started = pvc(cluster, "vm", "start", "cli-vm", "--wait")
    assert started.exit_code == 0, started.output
    assert "start" in started.stdout
    wait_running_on(cluster, "cli-vm", "hv3")

    listed = pvc(cluster, "vm", "list", "--format", "json")
    assert [(vm["name"], vm["state"], vm["node"], vm["memory_mib"]) for vm in json.loads(listed.stdout)] == \
        [("cli-vm", "start", "hv3", 768)]
    table = pvc(cluster, "vm", "list").stdout
    assert table.splitlines()[0].split()[:3] == ["NAME", "STATE", "NODE"] and "cli-vm" in table

    info = json.loads(pvc(cluster, "vm", "info", "cli-vm", "--format", "json").stdout)
    assert set(info) == INFO_KEYS and info["running"] is True
    assert "<name>cli-vm</name>" in pvc(cluster, "vm", "dump", "cli-vm").stdout

    refused = pvc(cluster, "vm", "stop", "cli-vm")
    assert refused.exit_code == 1 and "not confirmed: Forcibly stop VM cli-vm" in refused.stderr
    wait_running_on(cluster, "cli-vm", "hv3")

    stopped = pvc(cluster, "vm", "stop", "cli-vm", "--yes", "--wait")
    assert stopped.exit_code == 0, stopped.output
    wait_running_on(cluster, "cli-vm", None)

    kept = pvc(cluster, "vm", "remove", "cli-vm", input="n\n")
    assert kept.exit_code == 1 and cluster.client.vms.info("cli-vm")
    removed = pvc(cluster, "vm", "remove", "cli-vm", "--yes")
    assert removed.exit_code == 0 and removed.stdout.strip() == "removed VM cli-vm"
    assert cluster.client.vms.list() == []
    wait_gone(cluster, "cli-vm")


def test_modify_replaces_the_definition_and_restart_applies_it(cluster, tmp_path):
    vms = cluster.client.vms
    uuid = new_uuid()
    vms.define(vm_xml("grow", memory_mib=512, uuid=uuid), target="hv1")
    vms.start("grow", wait=True)
    bigger = tmp_path / "grow.xml"
    bigger.write_text(vm_xml("grow", memory_mib=1536, vcpus=3))

    modified = pvc(cluster, "vm", "modify", "grow", str(bigger), "--restart", "--yes", "--format", "json")

    assert modified.exit_code == 0, modified.output
    info = vms.info("grow")
    assert (info["memory_mib"], info["vcpus"], info["uuid"]) == (1536, 3, uuid), "the UUID is kept"
    assert "<vcpu>3</vcpu>" in vms.dump("grow")
    wait_running_on(cluster, "grow", "hv1")
    assert eventually(lambda: cluster.client.nodes.info("hv1")["memory_allocated_mib"] == 1536, 5), \
        "the host runs the new definition"

    other_name = tmp_path / "other.xml"
    other_name.write_text(vm_xml("not-grow"))
    refused = pvc(cluster, "vm", "modify", "grow", str(other_name), "-y")
    assert refused.exit_code == 1 and "use rename" in refused.stderr


def test_rename_needs_a_stopped_vm_and_carries_it_over_on_its_node(cluster):
    vms = cluster.client.vms
    vms.define(vm_xml("old-name"), target="hv2")
    vms.start("old-name", wait=True)

    refused = pvc(cluster, "vm", "rename", "old-name", "new-name")
    assert refused.exit_code == 1 and "must be stopped" in refused.stderr

    vms.stop("old-name", wait=True)
    renamed = vms.rename("old-name", "new-name")

    assert renamed["name"] == "new-name" and renamed["node"] == "hv2"
    assert [vm["name"] for vm in vms.list()] == ["new-name"]
    wait_host_has(cluster, "hv2", {"new-name": False})
    vms.start("new-name", wait=True)
    wait_running_on(cluster, "new-name", "hv2")


def test_migrate_remembers_the_node_unmigrate_returns_and_move_forgets(cluster):
    vms = cluster.client.vms
    vms.define(vm_xml("traveller"), target="hv1")
    vms.start("traveller", wait=True)

    migrated = vms.migrate("traveller", target="hv2", wait=True)
    assert (migrated["node"], migrated["last_node"], migrated["running"]) == ("hv2", "hv1", True)
    wait_running_on(cluster, "traveller", "hv2")
    assert "traveller" not in cluster.host_domains("hv1"), "the old node undefines its copy"

    unmigrated = pvc(cluster, "vm", "unmigrate", "traveller", "--wait", "--format", "json")
    assert unmigrated.exit_code == 0, unmigrated.output
    assert (json.loads(unmigrated.stdout)["node"], json.loads(unmigrated.stdout)["last_node"]) == ("hv1", None)
    wait_running_on(cluster, "traveller", "hv1")

    moved = pvc(cluster, "vm", "move", "traveller", "--target", "hv3", "--wait", "--format", "json")
    assert moved.exit_code == 0, moved.output
    assert (json.loads(moved.stdout)["node"], json.loads(moved.stdout)["last_node"]) == ("hv3", None)
    wait_running_on(cluster, "traveller", "hv3")

    nowhere = pvc(cluster, "vm", "unmigrate", "traveller")
    assert nowhere.exit_code == 1 and "has not been migrated" in nowhere.stderr
    wait_running_on(cluster, "traveller", "hv3")

    chosen = vms.migrate("traveller", wait=True)
    assert chosen["node"] in ("hv1", "hv2") and chosen["last_node"] == "hv3"
    wait_running_on(cluster, "traveller", chosen["node"])


def test_a_stopped_vm_migrates_by_changing_node_and_stays_stopped(cluster):
    vms = cluster.client.vms
    vms.define(vm_xml("parked"), target="hv1")

    moved = vms.migrate("parked", target="hv3")

    assert (moved["node"], moved["state"]) == ("hv3", "stop")
    wait_host_has(cluster, "hv3", {"parked": False})
    assert eventually(lambda: "parked" not in cluster.host_domains("hv1"), 5), "the old node undefines its copy"
    assert "parked" not in running_hosts(cluster)


def test_vm_meta_changes_only_what_it_names_and_info_shows_it(cluster, tmp_path):
    vms = cluster.client.vms
    vms.define(vm_xml("meta"), target="hv1", node_limit=["hv1", "hv2"], node_selector="mem")

    changed = pvc(cluster, "vm", "meta", "meta", "--node-selector", "vms", "--node-autostart")
    assert changed.exit_code == 0, changed.output
    info = json.loads(pvc(cluster, "vm", "info", "meta", "--format", "json").stdout)
    assert (info["node_selector"], info["node_autostart"], info["node_limit"]) == ("vms", True, ["hv1", "hv2"])

    pvc(cluster, "vm", "meta", "meta", "--no-node-autostart", "--migration-method", "live")
    info = json.loads(pvc(cluster, "vm", "info", "meta", "--format", "json").stdout)
    assert (info["node_selector"], info["node_autostart"], info["migration_method"]) == ("vms", False, "live")

    cleared = pvc(cluster, "vm", "meta", "meta", "--node-limit", "")
    assert cleared.exit_code == 0, cleared.output
    assert vms.info("meta")["node_limit"] == [] and vms.info("meta")["node_selector"] == "vms"

    assert vms.set_meta("meta", node_selector="load")["node_selector"] == "load"
    nothing = pvc(cluster, "vm", "meta", "meta")
    assert nothing.exit_code == 2 and "nothing to change" in nothing.output

    cluster.client.provisioner.profile_add("web-tier")
    try:
        assert pvc(cluster, "vm", "meta", "meta", "--profile", "web-tier").exit_code == 0
        assert vms.info("meta")["profile"] == "web-tier"
        assert "Profile:" in pvc(cluster, "vm", "info", "meta").stdout
        unknown = pvc(cluster, "vm", "meta", "meta", "--profile", "no-such")
        assert unknown.exit_code == 1 and "no provisioner profile named 'no-such'" in unknown.output
        assert vms.info("meta")["profile"] == "web-tier"
        assert pvc(cluster, "vm", "meta", "meta", "--profile", "").exit_code == 0
        assert vms.info("meta")["profile"] is None
    finally:
        cluster.client.provisioner.profile_remove("web-tier")


def test_a_vm_limited_to_two_nodes_stays_on_them_through_placement_migration_flush_and_ready(cluster):
    vms, nodes = cluster.client.vms, cluster.client.nodes
    allowed = {"hv2", "hv3"}
    seen: set[str] = set()

    def where() -> str:
        hosts = assert_no_vm_on_two_hosts(cluster).get("fenced-in", [])
        assert len(hosts) == 1 and hosts[0] in allowed, f"fenced-in runs on {hosts}"
        seen.add(hosts[0])
        return hosts[0]

    placed = vms.define(vm_xml("fenced-in"), node_limit=sorted(allowed))
    assert placed["node"] in allowed
    vms.start("fenced-in", wait=True)
    wait_running_on(cluster, "fenced-in", placed["node"])
    first = where()

    migrated = vms.migrate("fenced-in", wait=True)
    assert migrated["node"] == (allowed - {first}).pop(), "the only other node in the limit"
    wait_running_on(cluster, "fenced-in", migrated["node"])
    second = where()

    try:
        flushed = wait_for_task(cluster.client, nodes.flush(second))
        assert flushed["moved"] == ["fenced-in"] and flushed["shut_down"] == []
        assert nodes.info(second)["domain_state"] == "flushed"
        wait_running_on(cluster, "fenced-in", first)
        assert where() == first
    finally:
        readied = wait_for_task(cluster.client, nodes.ready(second))
    assert readied["moved"] == ["fenced-in"], "ready brings back the VM migrated away from it"
    wait_running_on(cluster, "fenced-in", second)
    assert where() == second
    assert seen == allowed
