"""`pvc.connect()` from a script: settings as the CLI resolves them, failover, timeouts, threads."""
import socket
import threading
import time

import pytest
import yaml

import pvc
from pvc.cli.localcluster.processes import free_port
from pvc.errors import NotFound, Unavailable

NODES = ["hv1", "hv2", "hv3"]


@pytest.fixture
def clean_environment(tmp_path, monkeypatch):
    """No client config in HOME and no PVC_* variables, as on a fresh machine."""
    monkeypatch.setenv("HOME", str(tmp_path))
    for variable in ("PVC_CONFIG", "PVC_URI", "PVC_API_KEY"):
        monkeypatch.delenv(variable, raising=False)
    return monkeypatch


def names(client) -> list[str]:
    return [node["name"] for node in client.nodes.list()]


def dead_uri() -> str:
    return f"pvc://127.0.0.1:{free_port()}"


def test_connect_reads_the_file_pvc_config_names(cluster, clean_environment):
    clean_environment.setenv("PVC_CONFIG", str(cluster.local.client_config))
    with pvc.connect() as client:
        assert names(client) == NODES


def test_connect_reads_the_default_client_config(cluster, clean_environment, tmp_path):
    path = tmp_path / ".config" / "pvc" / "pvc.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(cluster.local.client_config.read_text())
    with pvc.connect() as client:
        assert names(client) == NODES


def test_pvc_uri_and_pvc_api_key_override_the_config_file(cluster, clean_environment, tmp_path):
    stale = tmp_path / "stale.yaml"
    stale.write_text(yaml.safe_dump({"uris": [dead_uri()], "api_key": "an-old-key"}))
    clean_environment.setenv("PVC_CONFIG", str(stale))
    clean_environment.setenv("PVC_URI", cluster.local.uris[0])
    clean_environment.setenv("PVC_API_KEY", cluster.local.state["api_key"])
    with pvc.connect() as client:
        assert names(client) == NODES


def test_the_environment_alone_is_enough(cluster, clean_environment):
    clean_environment.setenv("PVC_URI", cluster.local.uris[0])
    clean_environment.setenv("PVC_API_KEY", cluster.local.state["api_key"])
    with pvc.connect() as client:
        assert names(client) == NODES


def test_results_are_plain_data_shaped_for_scripts(cluster):
    nodes = cluster.client.nodes.list()
    assert isinstance(nodes, list) and all(isinstance(node, dict) for node in nodes)
    for node in nodes:
        assert all(isinstance(value, (str, int, float, bool, type(None))) for value in node.values()), node
        assert {"name", "daemon_state", "domain_state", "memory_total_mib", "memory_free_mib", "load"} <= set(node)
    with pytest.raises(NotFound, match="no node named 'hv9'"):
        cluster.client.nodes.info("hv9")


def test_the_client_fails_over_to_the_next_coordinator(cluster):
    with pvc.connect([dead_uri(), cluster.local.uris[0]], cluster.local.state["api_key"]) as client:
        started = time.monotonic()
        assert names(client) == NODES
        assert time.monotonic() - started < 2
        assert client.cluster.status()["answered_by"] == "pvcapid1"


def test_an_unreachable_coordinator_is_unavailable_within_seconds(cluster):
    with pvc.connect(dead_uri(), cluster.local.state["api_key"]) as client:
        started = time.monotonic()
        with pytest.raises(Unavailable, match="no coordinator answered"):
            client.nodes.list()
        assert time.monotonic() - started < 2


def test_a_coordinator_that_never_answers_is_unavailable_after_the_timeout(cluster):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        uri = f"pvc://127.0.0.1:{silent.getsockname()[1]}"
        with pvc.connect(uri, cluster.local.state["api_key"], timeout=2) as client:
            started = time.monotonic()
            with pytest.raises(Unavailable, match="timed out"):
                client.nodes.list()
            assert time.monotonic() - started < 4


def test_one_client_serves_many_threads(cluster):
    results: list[list[str]] = []
    failures: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                results.append(names(cluster.client))
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not failures, failures
    assert results == [NODES] * 160
