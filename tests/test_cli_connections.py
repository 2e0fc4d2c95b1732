"""Saved connections, like kubectl's contexts: added, listed, made default, removed; two real clusters side by side
reached by name with `pvc -c`; the keys kept where only their owner can read them; and PVC_CONFIG, PVC_URI and
PVC_API_KEY working as before, with a clear precedence."""
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from pvc.cli.localcluster.processes import free_port
from pvc.cli.main import cli

from conftest import started_cluster


@pytest.fixture(scope="module")
def second_cluster(tmp_path_factory):
    """A one-node cluster beside the module's three-node `cluster`: node counts tell them apart."""
    yield from started_cluster(tmp_path_factory.mktemp("second"), nodes=1, coordinators=1)


@pytest.fixture
def home(tmp_path):
    """A user with no PVC settings at all yet."""
    return tmp_path


@pytest.fixture
def pvc(home):
    def run(*args: str, **env: str | None):
        environment = {"HOME": str(home), "PVC_CLIENT_DIR": str(home / "pvc-client"), "PVC_CONFIG": None,
                       "PVC_URI": None, "PVC_API_KEY": None, "PVC_CONNECTION": None, "PVC_UNSAFE": None, **env}
        return CliRunner(env=environment).invoke(cli, list(args), catch_exceptions=False)
    return run


def ok(result) -> str:
    assert result.exit_code == 0, result.stderr
    return result.stdout


def one_line_error(result) -> str:
    assert result.exit_code == 1 and result.stdout == "", (result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1, result.stderr
    return result.stderr


def key_file(home, running) -> str:
    path = home / f"key-{running.local.state['api_key'][:6]}"
    path.write_text(running.local.state["api_key"] + "\n")
    return str(path)


def node_names(pvc, *root_options: str, **env: str | None) -> list[str]:
    return ok(pvc(*root_options, "node", "list", "-f", "raw", **env)).split()


def test_a_connection_added_is_used_by_name_and_its_key_kept_private(pvc, home, cluster):
    added = json.loads(ok(pvc("connection", "add", "main", *cluster.local.uris, "--api-key-file",
                              key_file(home, cluster), "--description", "the lab", "-f", "json")))
    assert added == {"name": "main", "default": True, "uris": cluster.local.uris, "tls_ca": None,
                     "description": "the lab"}

    saved = home / "pvc-client" / "connections.yaml"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert stat.S_IMODE(saved.parent.stat().st_mode) == 0o700
    assert [path.name for path in saved.parent.iterdir()] == ["connections.yaml"]

    assert node_names(pvc, "-c", "main") == ["hv1", "hv2", "hv3"]
    assert node_names(pvc, "--connection", "main") == ["hv1", "hv2", "hv3"]
    assert node_names(pvc) == ["hv1", "hv2", "hv3"]

    table = ok(pvc("connection", "list"))
    assert table.splitlines()[1].split()[:3] == ["*", "main", cluster.local.uris[0]]
    assert cluster.local.state["api_key"] not in table
    listed = json.loads(ok(pvc("connection", "list", "--format", "json")))
    assert "api_key" not in listed[0]
    shown = json.loads(ok(pvc("connection", "list", "--show-keys", "-f", "json")))
    assert shown[0]["api_key"] == cluster.local.state["api_key"]


def test_two_clusters_side_by_side_reached_by_name(pvc, home, cluster, second_cluster):
    ok(pvc("connection", "add", "big", *cluster.local.uris, "--api-key-file", key_file(home, cluster)))
    address, port = second_cluster.local.uris[0].removeprefix("pvc://").rsplit(":", 1)
    ok(pvc("connection", "add", "small", "-a", address, "-p", port, "-k", second_cluster.local.state["api_key"]))

    assert node_names(pvc, "-c", "big") == ["hv1", "hv2", "hv3"]
    assert node_names(pvc, "-c", "small") == ["hv1"]
    assert node_names(pvc, PVC_CONNECTION="small") == ["hv1"]
    assert node_names(pvc) == ["hv1", "hv2", "hv3"], "the first connection saved is the default"

    assert ok(pvc("connection", "default", "small")) == "Default connection: small\n"
    assert ok(pvc("connection", "default")) == "small\n"
    assert node_names(pvc) == ["hv1"]
    assert ok(pvc("connection", "list", "-f", "raw")).split() == ["big", "small"]

    detail = {row["name"]: row for row in json.loads(ok(pvc("connection", "detail", "-f", "json")))}
    assert (detail["big"]["reachable"], detail["big"]["nodes_total"]) == (True, 3)
    assert (detail["small"]["reachable"], detail["small"]["nodes_total"], detail["small"]["leader"]) == \
        (True, 1, "pvcapid1")


def test_precedence_of_connection_config_file_and_environment(pvc, home, cluster, second_cluster):
    ok(pvc("connection", "add", "small", *second_cluster.local.uris, "-k", second_cluster.local.state["api_key"]))
    big_config = str(cluster.local.client_config)

    assert node_names(pvc) == ["hv1"], "the default connection"
    assert node_names(pvc, PVC_CONFIG=big_config) == ["hv1", "hv2", "hv3"], "PVC_CONFIG beats the default"
    assert node_names(pvc, "-c", "small", PVC_CONFIG=big_config) == ["hv1"], "-c beats PVC_CONFIG"
    assert node_names(pvc, "-c", "small", PVC_URI=",".join(cluster.local.uris),
                      PVC_API_KEY=cluster.local.state["api_key"]) == ["hv1"], "-c is used whole"
    assert node_names(pvc, PVC_URI=",".join(cluster.local.uris), PVC_API_KEY=cluster.local.state["api_key"]) == \
        ["hv1", "hv2", "hv3"], "PVC_URI and PVC_API_KEY override the default connection's keys"


def test_only_the_environment_still_works(pvc, cluster):
    assert node_names(pvc, PVC_URI=",".join(cluster.local.uris), PVC_API_KEY=cluster.local.state["api_key"]) == \
        ["hv1", "hv2", "hv3"]


def test_bad_connections_are_refused_in_one_line_and_nothing_is_saved(pvc, home, cluster):
    keys = key_file(home, cluster)
    assert "invalid coordinator URI 'http://x:1': expected pvc://HOST:PORT" in one_line_error(
        pvc("connection", "add", "bad", "http://x:1", "--api-key-file", keys))
    assert "invalid address '127.0.0.1': expected HOST:PORT" in one_line_error(
        pvc("connection", "add", "bad", "pvc://127.0.0.1", "--api-key-file", keys))
    assert "needs an API key" in one_line_error(pvc("connection", "add", "bad", *cluster.local.uris))
    assert "cannot read the API key file" in one_line_error(
        pvc("connection", "add", "bad", *cluster.local.uris, "--api-key-file", str(home / "absent")))
    assert "invalid connection name" in one_line_error(
        pvc("connection", "add", "../x", *cluster.local.uris, "--api-key-file", keys))
    assert "needs at least one coordinator URI" in one_line_error(
        pvc("connection", "add", "bad", "--api-key-file", keys))
    assert not (home / "pvc-client" / "connections.yaml").exists()

    ok(pvc("connection", "add", "main", *cluster.local.uris, "--api-key-file", keys))
    assert "a connection named 'main' exists already" in one_line_error(
        pvc("connection", "add", "main", *cluster.local.uris, "--api-key-file", keys))
    assert one_line_error(pvc("-c", "other", "node", "list")) == \
        "Error: no connection named 'other' (see pvc connection list)\n"
    assert "no connection named 'other'" in one_line_error(pvc("connection", "default", "other"))


def test_a_connection_whose_cluster_is_gone_says_so(pvc, home):
    ok(pvc("connection", "add", "gone", f"pvc://127.0.0.1:{free_port()}", "-k", "whatever"))
    assert one_line_error(pvc("-c", "gone", "node", "list")).startswith("Error: no coordinator answered")
    detail = json.loads(ok(pvc("connection", "detail", "-f", "json")))
    assert detail[0]["reachable"] is False and detail[0]["error"].startswith("no coordinator answered")


def test_removing_a_connection_asks_first_and_clears_the_default(pvc, home, cluster):
    ok(pvc("connection", "add", "main", *cluster.local.uris, "--api-key-file", key_file(home, cluster)))
    assert "not confirmed: Remove the saved connection main" in one_line_error(pvc("connection", "remove", "main"))
    assert ok(pvc("connection", "list", "-f", "raw")) == "main\n"
    assert ok(pvc("connection", "remove", "main", "--yes")) == "Removed connection main\n"
    assert ok(pvc("connection", "list", "-f", "raw")) == ""
    assert ok(pvc("connection", "default")) == "no default connection\n"
    assert "no connection named 'main'" in one_line_error(pvc("-u", "connection", "remove", "main"))


def test_shell_completion_offers_the_saved_connections(pvc, home, cluster):
    ok(pvc("connection", "add", "lab", *cluster.local.uris, "-k", "key"))
    ok(pvc("connection", "add", "production", *cluster.local.uris, "-k", "key"))
    env = {**os.environ, "PVC_CLIENT_DIR": str(home / "pvc-client"), "_PVC_COMPLETE": "bash_complete",
           "COMP_WORDS": "pvc -c ", "COMP_CWORD": "2"}
    completed = subprocess.run([str(Path(sys.executable).with_name("pvc"))], env=env, capture_output=True,
                               text=True, timeout=60)
    assert completed.stdout.splitlines() == ["plain,lab", "plain,production"]
