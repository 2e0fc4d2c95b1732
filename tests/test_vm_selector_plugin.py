"""A migration selector from a third-party distribution (the fixture `pvc-example-plugin`, entry point group
`pvc`) is listed by `pvc plugin list` and places VMs by name, through the CLI."""
import json

import pytest

from helpers import eventually
from vm_support import pvc, vm_xml, wait_host_has

SELECTOR = "example-fewest-defined"


@pytest.mark.cluster(nodes=3)
def test_a_plugin_selector_is_listed_and_places_a_vm_where_it_says(example_plugin_installed,
                                                                   fresh_cluster, tmp_path):
    listed = pvc(fresh_cluster, "plugin", "list")
    assert listed.exit_code == 0, listed.output
    assert any(line.startswith("example ") and SELECTOR in line for line in listed.stdout.splitlines())

    fresh_cluster.client.vms.define(vm_xml("parked-on-hv1"), target="hv1")
    wait_host_has(fresh_cluster, "hv1", {"parked-on-hv1": False})
    assert eventually(lambda: fresh_cluster.client.nodes.info("hv1")["vms_defined"] == 1, 5, 0.1)
    # Nothing runs, so every node has the same free memory and `mem` would take hv1 (first by name);
    # the plugin counts defined VMs, so hv1 has one too many and hv2 wins the tie with hv3 by name.
    xml_file = tmp_path / "placed.xml"
    xml_file.write_text(vm_xml("placed"))

    defined = pvc(fresh_cluster, "vm", "define", str(xml_file), "--node-selector", SELECTOR, "--format", "json")

    assert defined.exit_code == 0, defined.output
    placed = json.loads(defined.stdout)
    assert (placed["node"], placed["node_selector"]) == ("hv2", SELECTOR)
    wait_host_has(fresh_cluster, "hv2", {"placed": False})
    default = fresh_cluster.client.vms.define(vm_xml("by-default"))
    assert default["node"] == "hv1", "the cluster default (mem) chooses otherwise"

    changed = pvc(fresh_cluster, "vm", "meta", "by-default", "--node-selector", SELECTOR)
    assert changed.exit_code == 0, changed.output
    assert fresh_cluster.client.vms.info("by-default")["node_selector"] == SELECTOR
