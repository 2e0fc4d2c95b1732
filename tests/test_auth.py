"""Every connection authenticates: clients with an API key, coordinators to node agents with the cluster secret."""
import os
import subprocess
import sys
from pathlib import Path

import Pyro5.api
import Pyro5.errors
import pytest

import pvc
from pvc.client import pyro_uri
from pvc.errors import AuthenticationError, ConfigError
from pvc.handshake import authenticated_proxy


def test_a_wrong_api_key_is_refused_with_a_clear_error(cluster):
    client = pvc.connect(cluster.local.uris, api_key="not-the-key")
    with pytest.raises(AuthenticationError, match="invalid API key"):
        client.nodes.list()
    with pytest.raises(AuthenticationError):
        client.cluster.status()


def test_a_connection_presenting_no_api_key_gets_no_data(cluster):
    bare = Pyro5.api.Proxy(pyro_uri(cluster.local.uris[0], "nodes"))
    bare._pyroTimeout = 5
    with bare, pytest.raises(Pyro5.errors.CommunicationError, match="no API key presented"):
        bare.list()


def test_a_client_without_an_api_key_is_told_what_is_missing(cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("PVC_CONFIG", raising=False)
    monkeypatch.delenv("PVC_API_KEY", raising=False)
    monkeypatch.setenv("PVC_URI", cluster.local.uris[0])
    with pytest.raises(ConfigError, match="api_key"):
        pvc.connect()


def test_the_cli_with_a_wrong_api_key_prints_one_line_and_fails(cluster):
    result = subprocess.run([str(Path(sys.executable).with_name("pvc")), "node", "list"],
                            capture_output=True, text=True, timeout=30,
                            env={**os.environ, "PVC_CONFIG": str(cluster.local.client_config),
                                 "PVC_API_KEY": "not-the-key"})
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
    assert "invalid API key" in result.stderr
    assert "hv1" not in result.stderr


@pytest.mark.parametrize("presented", [None, "not-the-secret", "api-key"])
def test_a_node_agent_accepts_only_the_cluster_secret(cluster, presented):
    agent_uri = cluster.client.nodes.info("hv1")["agent_uri"]
    if presented == "api-key":
        presented = cluster.local.state["api_key"]
    if presented is None:
        agent = Pyro5.api.Proxy(agent_uri)
        agent._pyroTimeout = 5
    else:
        agent = authenticated_proxy(agent_uri, presented, 5)
    with agent, pytest.raises(Pyro5.errors.CommunicationError, match="rejected: .*cluster secret"):
        agent.domains()

    with authenticated_proxy(agent_uri, cluster.local.state["cluster_secret"], 5) as trusted:
        assert trusted.ping() == "hv1"
