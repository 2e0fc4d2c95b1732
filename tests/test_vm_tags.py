"""User tags on VMs through the CLI, with upstream PVC's spellings: tagging at define time and later, finding
VMs by tag, and protected tags, which `vm tag remove` refuses (upstream's meaning: they stay with the VM)."""
import json

import pytest

from vm_support import pvc, remove_all_vms, vm_xml

LIST_KEYS = {"name", "uuid", "state", "node", "last_node", "running", "unknown", "node_limit", "node_selector",
             "node_autostart", "migration_method", "max_downtime_ms", "vcpus", "memory_mib", "last_error",
             "migration_note"}
"""What `vm list --format json` gave before tags: each key stays as it was."""


@pytest.fixture(autouse=True)
def no_vms_left(cluster):
    yield
    remove_all_vms(cluster)


def ok(result) -> str:
    assert result.exit_code == 0, result.output
    return result.stdout


def define(cluster, tmp_path, name: str, *options: str) -> None:
    path = tmp_path / f"{name}.xml"
    path.write_text(vm_xml(name))
    ok(pvc(cluster, "vm", "define", str(path), "--target", "hv1", *options))


def listed(cluster, *options: str) -> list[str]:
    return [vm["name"] for vm in json.loads(ok(pvc(cluster, "vm", "list", *options, "--format", "json")))]


def test_tags_given_at_define_time_filter_the_list_and_show_in_info(cluster, tmp_path):
    define(cluster, tmp_path, "web1", "--tag", "web", "-g", "prod")
    define(cluster, tmp_path, "web2", "-g", "web", "--protected-tag", "billing")
    define(cluster, tmp_path, "db1", "-G", "prod")

    assert listed(cluster, "--tag", "web") == ["web1", "web2"]
    assert listed(cluster, "-g", "prod") == ["db1", "web1"]
    assert listed(cluster, "--tag", "nothing") == []
    assert listed(cluster) == ["db1", "web1", "web2"]

    rows = json.loads(ok(pvc(cluster, "vm", "list", "--format", "json")))
    assert all(LIST_KEYS <= set(row) for row in rows), "existing keys are unchanged; tags are added"
    assert {row["name"]: (row["tags"], row["protected_tags"]) for row in rows} == {
        "db1": (["prod"], ["prod"]), "web1": (["prod", "web"], []), "web2": (["billing", "web"], ["billing"])}
    assert "TAGS" in ok(pvc(cluster, "vm", "list")).splitlines()[0]

    info = json.loads(ok(pvc(cluster, "vm", "info", "web2", "--format", "json")))
    assert (info["tags"], info["protected_tags"]) == (["billing", "web"], ["billing"])
    assert "Tags:" in ok(pvc(cluster, "vm", "info", "web2")) and "billing (protected),web" in \
        ok(pvc(cluster, "vm", "info", "web2"))


def test_tags_are_added_and_removed_and_a_protected_tag_stays(cluster, tmp_path):
    define(cluster, tmp_path, "app")

    assert ok(pvc(cluster, "vm", "tag", "add", "app", "blue")).strip() == "VM app: tag blue added"
    assert ok(pvc(cluster, "vm", "tag", "add", "app", "keep", "--protected")).strip() == \
        "VM app: tag keep added (protected)"
    assert json.loads(ok(pvc(cluster, "vm", "tag", "get", "app", "--format", "json"))) == \
        {"name": "app", "tags": [{"name": "blue", "protected": False}, {"name": "keep", "protected": True}]}
    assert listed(cluster, "--tag", "blue") == ["app"]

    ok(pvc(cluster, "vm", "tag", "remove", "app", "blue"))
    assert listed(cluster, "--tag", "blue") == []

    protected = pvc(cluster, "vm", "tag", "remove", "app", "keep")
    assert protected.exit_code == 1
    assert protected.stderr.strip() == "Error: tag 'keep' of VM 'app' is protected and cannot be removed"
    ok(pvc(cluster, "vm", "tag", "add", "app", "keep"))
    assert cluster.client.vms.tags("app")["tags"] == [{"name": "keep", "protected": True}], \
        "adding it again does not lift the protection"

    missing = pvc(cluster, "vm", "tag", "remove", "app", "never")
    assert missing.stderr.strip() == "Error: VM 'app' has no tag 'never'"
    bad = pvc(cluster, "vm", "tag", "add", "app", "no spaces")
    assert bad.exit_code == 1 and bad.stderr.strip().startswith("Error: invalid tag name 'no spaces'")
    assert cluster.client.vms.tags("app")["tags"] == [{"name": "keep", "protected": True}]


def test_a_protected_tag_does_not_stop_a_removal_as_upstream(cluster, tmp_path):
    define(cluster, tmp_path, "temp", "-G", "keep")

    assert ok(pvc(cluster, "vm", "remove", "temp", "--yes", "--wait")).strip() == "removed VM temp"
    assert listed(cluster) == []
