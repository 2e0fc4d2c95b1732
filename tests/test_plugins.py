"""Plugins: a third-party distribution installed with pip is loaded through the `pvc` entry points and listed
with where it came from; two plugins claiming one name is an error naming both."""
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

import pvc
from pvc import plugin_manager
from pvc.errors import PluginError


@pytest.mark.cluster(nodes=1)
def test_an_installed_plugin_is_listed_with_its_distribution_and_version(example_plugin_installed, fresh_cluster):
    plugins = {plugin["name"]: plugin for plugin in fresh_cluster.client.cluster.plugins()}

    example = plugins["example"]
    assert (example["distribution"], example["version"]) == ("pvc-example-plugin", "1.2.3")
    assert example["module"] == "pvc_example_plugin"
    assert example["migration_selectors"] == ["example-fewest-defined"]
    assert plugins["selectors"]["distribution"] == "pvc"

    listed = subprocess.run([str(Path(sys.executable).with_name("pvc")), "plugin", "list"], capture_output=True,
                            text=True, timeout=30,
                            env={**os.environ, "PVC_CONFIG": str(fresh_cluster.local.client_config)})
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith("example "))
    assert row.split()[:4] == ["example", "pvc-example-plugin", "1.2.3", "pvc_example_plugin"]
    assert "migration selector: example-fewest-defined" in row


def plugin_module(name: str, *selector_names: str) -> types.ModuleType:
    module = types.ModuleType(name)

    @pvc.hookimpl
    def pvc_migration_selectors():
        return {selector: object() for selector in selector_names}
    module.pvc_migration_selectors = pvc_migration_selectors
    return module


def test_two_plugins_registering_the_same_name_is_an_error_naming_both():
    plugins = plugin_manager.load(extra=[plugin_module("acme_placement", "spread", "pack"),
                                         plugin_module("other_placement", "spread")])
    with pytest.raises(PluginError) as error:
        plugins.registry("pvc_migration_selectors")
    message = str(error.value)
    assert "migration selector 'spread'" in message
    assert "acme_placement" in message and "other_placement" in message


def test_a_plugin_may_not_take_a_built_in_name():
    plugins = plugin_manager.load(extra=[plugin_module("greedy", "mem")])
    with pytest.raises(PluginError, match=r"'mem' is registered by two plugins: .*selectors.*greedy"):
        plugins.registry("pvc_migration_selectors")


def test_the_built_in_plugins_come_through_the_entry_points():
    plugins = plugin_manager.load()
    assert set(plugins.registry("pvc_migration_selectors")) >= {"mem", "memprov", "load", "vcpus", "vms"}
    selectors = next(row for row in plugins.describe() if row["name"] == "selectors")
    assert selectors["distribution"] == "pvc"
    json.dumps(plugins.describe())
