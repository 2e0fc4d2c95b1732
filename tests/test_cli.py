"""The `pvc` command line against a running cluster: tables for people, JSON for scripts, one-line errors."""
import json

import pytest
from click.testing import CliRunner

from pvc.cli.main import cli


@pytest.fixture(scope="module")
def pvc_command(cluster):
    """Runs `pvc ARGS...` as a user whose PVC_CONFIG points at the cluster."""
    runner = CliRunner(env={"PVC_CONFIG": str(cluster.local.client_config), "PVC_URI": None, "PVC_API_KEY": None})

    def run(*args: str):
        return runner.invoke(cli, list(args), catch_exceptions=False)
    return run


def as_json(result):
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def assert_flat_list_with_names(rows):
    assert isinstance(rows, list) and rows
    for row in rows:
        assert isinstance(row, dict) and isinstance(row["name"], str)
        for key, value in row.items():
            assert not isinstance(value, dict), f"{key} is a nested object in {row}"
            if isinstance(value, list):
                assert all(isinstance(item, (str, int, float)) for item in value), f"{key} nests in {row}"


def test_cluster_status_as_a_table_and_as_json(pvc_command):
    table = pvc_command("cluster", "status")
    assert table.exit_code == 0, table.stderr
    assert "Maintenance:  off" in table.stdout
    assert "Leader:       pvcapid1" in table.stdout
    assert "3 (3 run), 3 ready" in table.stdout
    assert "MAINTENANCE" not in table.stdout

    status = as_json(pvc_command("cluster", "status", "--format", "json"))
    assert status["maintenance"] is False
    assert status["leader"] == "pvcapid1"
    assert status["nodes_total"] == 3 and status["nodes_by_daemon_state"] == {"run": 3}


def test_maintenance_mode_is_shown_prominently_while_on(pvc_command):
    try:
        turned_on = pvc_command("cluster", "maintenance", "on")
        assert turned_on.exit_code == 0, turned_on.stderr
        assert turned_on.stdout.startswith("MAINTENANCE MODE")

        status = pvc_command("cluster", "status")
        assert status.stdout.splitlines()[0].startswith("MAINTENANCE MODE")
        assert "Maintenance:  on" in status.stdout
        assert as_json(pvc_command("cluster", "status", "--format", "json"))["maintenance"] is True
    finally:
        turned_off = pvc_command("cluster", "maintenance", "off", "--format", "json")
    assert as_json(turned_off)["maintenance"] is False
    assert "MAINTENANCE" not in pvc_command("cluster", "status").stdout


def test_node_list_as_a_table(pvc_command):
    result = pvc_command("node", "list")
    assert result.exit_code == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split()[:7] == ["NAME", "DAEMON", "DOMAIN", "HEALTH", "COORD", "CPUS", "LOAD"]
    assert [row.split()[:4] + row.split()[5:6] for row in rows] == [[name, "run", "ready", "100%", "16"]
                                                                   for name in ("hv1", "hv2", "hv3")]
    assert all(row.split()[4] in ("primary", "secondary", "client") for row in rows)
    assert all("64.0G" in row for row in rows)


def test_node_list_as_json_is_an_array_of_flat_objects_with_units_in_keys(pvc_command):
    nodes = as_json(pvc_command("node", "list", "--format", "json"))
    assert_flat_list_with_names(nodes)
    assert [node["name"] for node in nodes] == ["hv1", "hv2", "hv3"]
    for node in nodes:
        assert node["daemon_state"] == "run" and node["memory_total_mib"] == 65536
        assert isinstance(node["memory_free_mib"], int) and isinstance(node["load"], float)
        assert not any(key.startswith("memory") and not key.endswith("_mib") for key in node)


def test_node_info_as_a_table_and_as_json(pvc_command):
    table = pvc_command("node", "info", "hv2")
    assert table.exit_code == 0, table.stderr
    assert "Name:               hv2" in table.stdout
    assert "Daemon state:       run" in table.stdout
    assert "Memory total:       64.0G" in table.stdout
    assert "(simulated)" in table.stdout

    node = as_json(pvc_command("node", "info", "hv2", "--format", "json"))
    assert node["name"] == "hv2" and node["cpus"] == 16 and node["agent_uri"].startswith("PYRO:")


def test_plugin_list_shows_the_built_ins_with_their_distribution(pvc_command):
    table = pvc_command("plugin", "list")
    assert table.exit_code == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if line.startswith("selectors"))
    assert row.split()[:4] == ["selectors", "pvc", "0.1.0", "pvc.plugins.selectors"]
    assert "mem, memprov, load, vcpus, vms" in row or "load, mem, memprov, vcpus, vms" in row

    plugins = as_json(pvc_command("plugin", "list", "--format", "json"))
    assert_flat_list_with_names(plugins)
    selectors = next(plugin for plugin in plugins if plugin["name"] == "selectors")
    assert (selectors["distribution"], selectors["version"]) == ("pvc", "0.1.0")
    assert selectors["migration_selectors"] == ["load", "mem", "memprov", "vcpus", "vms"]


def test_an_unknown_node_is_a_one_line_error(pvc_command):
    result = pvc_command("node", "info", "hv9")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == "Error: no node named 'hv9'\n"


def test_an_invalid_node_name_is_a_one_line_error(pvc_command):
    result = pvc_command("node", "info", "../etc")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: invalid node name") and result.stderr.count("\n") == 1


def test_debug_adds_the_remote_traceback(pvc_command):
    result = pvc_command("--debug", "node", "info", "hv9")
    assert result.exit_code == 1
    assert "Traceback" in result.stderr
    assert "raise NotFound" in result.stderr and "areas/nodes.py" in result.stderr
    assert result.stderr.splitlines()[-1] == "Error: no node named 'hv9'"


def test_an_unreachable_coordinator_is_an_error_not_a_hang(tmp_path):
    from pvc.cli.localcluster.processes import free_port
    config = tmp_path / "pvc.yaml"
    config.write_text(f"uris: ['pvc://127.0.0.1:{free_port()}']\napi_key: whatever\n")
    result = CliRunner(env={"PVC_CONFIG": str(config)}).invoke(cli, ["node", "list"])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: no coordinator answered") and result.stderr.count("\n") == 1


def test_a_missing_client_config_is_a_one_line_error(tmp_path):
    result = CliRunner(env={"PVC_CONFIG": str(tmp_path / "absent.yaml"), "PVC_URI": None,
                            "PVC_API_KEY": None}).invoke(cli, ["node", "list"])
    assert result.exit_code == 1
    assert str(tmp_path / "absent.yaml") in result.stderr and result.stderr.count("\n") == 1
